"""The ``mlp`` family: flatten, hidden ``Linear → ReLU → Dropout`` layers, a linear head."""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from kdcore.contract import MlpSpec


def build_mlp(spec: MlpSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Paths: ``flatten``, ``input_drop``, ``fc1``, ``relu1``, ``drop1``, ..., ``head``."""
    modules: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    if spec.input_dropout:
        modules["input_drop"] = nn.Dropout(spec.input_dropout)
    width = math.prod(input_shape)
    for i, hidden in enumerate(spec.hidden, start=1):
        modules[f"fc{i}"] = nn.Linear(width, hidden)
        modules[f"relu{i}"] = nn.ReLU()
        if spec.dropout:
            modules[f"drop{i}"] = nn.Dropout(spec.dropout)
        width = hidden
    modules["head"] = nn.Linear(width, num_classes)
    return nn.Sequential(modules)
