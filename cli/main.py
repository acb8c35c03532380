"""``kdserve``: the command line. Engine commands run kdcore locally."""

from __future__ import annotations

import typer

from cli import engine

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
