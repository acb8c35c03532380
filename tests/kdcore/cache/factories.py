"""Teachers and cache inputs for the teacher-cache tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdcore.cache import CacheKey


class CountingTeacher(nn.Module):
    """A teacher that counts its forward calls (wrap, then freeze)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self.inner(x)
        return out


def key_inputs(**overrides: Any) -> CacheKey:
    base: dict[str, Any] = {
        "teacher_sha256": "a" * 64,
        "data_sha256": "b" * 64,
        "val_split": 0.1,
        "split_seed": 0,
        "normalizer": {"scale": 1 / 255, "mean": [0.5], "std": [0.25]},
        "augment": "crop_flip",
        "crop_padding": 4,
        "views_seed": 0,
        "views": 16,
        "precision": "fp32",
    }
    return CacheKey(**(base | overrides))
