"""Inspection: every module's dotted path, output shape, parameter count and MACs."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class LayerInfo(BaseModel):
    """One module of a model. ``shape`` is per sample (no batch dimension)."""

    path: str
    type: str
    shape: list[int]
    params: int
    macs: int


class ModelSummary(BaseModel):
    input_shape: list[int]
    params: int
    macs: int
    layers: list[LayerInfo]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def inspect_model(model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> ModelSummary:
    """Run one sample through ``model`` and describe every submodule.

    MACs come from :class:`torch.utils.flop_counter.FlopCounterMode` (FLOPs / 2 for the
    matmul and convolution ops it counts), so they follow what torch actually executes.
    Modules whose output is not a tensor (or that do not run) are listed without a shape;
    a TorchScript model lists no layers (it refuses hooks), only its totals.
    """
    shapes: dict[str, list[int]] = {}
    handles = []

    # TorchScript modules refuse forward hooks, so no layer of theirs is listed (none can be a
    # FitNets hint either); parameters and MACs still count, since the ops go through aten.
    def hookable(module: nn.Module) -> bool:
        return not isinstance(module, torch.jit.ScriptModule)

    for path, module in model.named_modules():
        if path and hookable(module):
            handles.append(module.register_forward_hook(_shape_hook(path, shapes)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    flops = counter.get_flop_counts()
    root = type(model).__name__
    layers = [
        LayerInfo(
            path=path,
            type=type(module).__name__,
            shape=shapes.get(path, []),
            params=count_params(module),
            macs=int(sum(flops.get(f"{root}.{path}", {}).values()) // 2),
        )
        for path, module in model.named_modules()
        if path and hookable(module)
    ]
    return ModelSummary(
        input_shape=list(input_shape),
        params=count_params(model),
        macs=int(counter.get_total_flops() // 2),
        layers=layers,
    )


def _shape_hook(path: str, shapes: dict[str, list[int]]) -> Any:
    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            shapes[path] = list(out.shape[1:])

    return hook
