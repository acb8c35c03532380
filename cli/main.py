"""``kdserve``: the command line. Engine commands run kdcore locally."""

from __future__ import annotations

import warnings

import typer

from cli import engine

# torch.export.load warns about its own internals (LeafSpec); nothing a user can act on.
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)

app = typer.Typer(
    name="kdserve",
    help="Knowledge distillation: train teachers, distill students (KD, FitNets), "
    "inspect, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
engine.register(app)

if __name__ == "__main__":  # pragma: no cover
    app()
