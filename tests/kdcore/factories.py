"""Tiny models and data for fast CPU tests."""

from __future__ import annotations

from typing import Any

import torch

from kdcore.contract import CnnSpec
from kdcore.data import Dataset


def image_data(
    n: int = 192, classes: int = 4, shape: tuple[int, int, int] = (3, 8, 8), seed: int = 0
) -> Dataset:
    """Learnable images: each class brightens its own quadrant-ish stripe, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randint(0, 100, (n, *shape), generator=g)
    rows = shape[1] // classes or 1
    for c in range(classes):
        x[y == c, :, c * rows : (c + 1) * rows, :] += 120
    return Dataset(
        x=x.clamp(0, 255).to(torch.uint8), y=y.long(), classes=[f"c{c}" for c in range(classes)]
    )


def cnn(width: int = 8, dropout: float = 0.0) -> CnnSpec:
    return CnnSpec.model_validate(
        {
            "family": "cnn",
            "layers": [
                {"type": "conv", "out": width, "k": 3, "pad": 1, "name": "conv1"},
                {"type": "batchnorm", "name": "bn1"},
                {"type": "relu", "name": "relu1"},
                {"type": "conv", "out": width, "k": 3, "pad": 1, "name": "conv2"},
                {"type": "batchnorm", "name": "bn2"},
                {"type": "relu", "name": "relu2"},
                {"type": "maxpool", "k": 2, "name": "pool"},
                {"type": "flatten", "name": "flatten"},
                {"type": "dropout", "p": dropout, "name": "drop"},
                {"type": "linear", "name": "fc"},
            ],
        }
    )


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "method": "scratch",
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "val_split": 0.25,
        "seed": 0,
        "device": "cpu",
    }
    return base | overrides
