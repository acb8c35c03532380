"""``kdserve``: the command line. Engine commands run kdcore locally; service commands run
the server (``db``, ``keys``, ``api``, ``worker``, ``up``); ``teachers``, ``datasets``,
``jobs``, ``sweeps``, ``cache`` and ``webhooks`` talk to a server over HTTP."""

from __future__ import annotations

import warnings

import typer

from cli import engine, remote, service, sweeps, webhooks

# torch.export.load warns about its own internals (LeafSpec); nothing a user can act on.
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)

app = typer.Typer(
    name="kdserve",
    help="Knowledge distillation: train teachers, distill students (KD, FitNets), "
    "inspect, evaluate; run the kdserve service and talk to it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
engine.register(app)
service.register(app)
remote.register(app)
sweeps.register(app)
webhooks.register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
