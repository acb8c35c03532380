"""Reaching a middle layer by its dotted path, with forward hooks."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn

from kdcore.contract import describe_missing_layer


class LayerNotFound(ValueError):
    """A dotted path that names no module; the message lists the nearest valid paths."""


def module_paths(model: nn.Module) -> list[str]:
    return [p for p, _ in model.named_modules() if p]


def get_layer(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` (e.g. ``"layer2.0.relu2"``)."""
    modules = dict(model.named_modules())
    if not path or path not in modules:
        raise LayerNotFound(describe_missing_layer(path, module_paths(model)))
    return modules[path]


class _Stop(Exception):
    """Raised by a tap to end the forward pass once the wanted layer has run."""


class FeatureTap:
    """Captures the output of one module during forward passes.

    With ``stop=True`` the forward pass ends right after that module, so the layers above
    it neither run nor see gradients: FitNets stage 1 trains "the student up to the guided
    layer" this way for any architecture, without rewriting it.

    Use as a context manager; call :meth:`run` to do a (possibly truncated) forward pass.
    """

    def __init__(self, model: nn.Module, path: str, *, stop: bool = False) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise LayerNotFound(
                f"cannot reach layer {path!r} of a TorchScript model (it refuses forward "
                "hooks): use method kd with it, or send safetensors weights plus an "
                "architecture spec for FitNets"
            )
        self.model = model
        self.path = path
        self.stop = stop
        self.output: torch.Tensor | None = None
        self._handle = get_layer(model, path).register_forward_hook(self._hook)

    def _hook(self, _m: nn.Module, _inp: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layer {self.path!r} does not output a single tensor")
        self.output = out
        if self.stop:
            raise _Stop

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Forward ``x``; returns ``(logits or None when stopped, tapped feature)``."""
        self.output = None
        logits: torch.Tensor | None = None
        try:
            logits = self.model(x)
        except _Stop:
            pass
        if self.output is None:
            raise RuntimeError(f"layer {self.path!r} did not run in the forward pass")
        return logits, self.output

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
