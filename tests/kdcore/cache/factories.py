"""Teachers and cache inputs for the teacher-cache tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdcore.cache import CacheKey


class CountingTeacher(nn.Module):
    """A teacher that counts the batches it runs on (wrap, then freeze).

    The count is kept by a hook on the first layer, in a list the hook closes over: copies
    of the teacher (kdcore.fold folds a deep copy, which keeps the hook) add to the same
    count, so "the teacher never ran" covers them too.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        count = self._count = [0]
        first = next(m for m in inner.modules() if not any(m.children()))
        first.register_forward_pre_hook(lambda _m, _args: count.__setitem__(0, count[0] + 1))

    @property
    def calls(self) -> int:
        return self._count[0]

    @calls.setter
    def calls(self, value: int) -> None:
        self._count[0] = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
        "cutout": 0,
        "views_seed": 0,
        "views": 16,
        "precision": "fp32",
    }
    return CacheKey(**(base | overrides))
