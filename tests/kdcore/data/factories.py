"""Small in-memory datasets for the kdcore.data tests."""

from __future__ import annotations

import torch

from kdcore.data import Dataset


def make_dataset(counts: list[int], feature: int = 2) -> Dataset:
    y = torch.cat([torch.full((c,), k, dtype=torch.int64) for k, c in enumerate(counts)])
    x = torch.arange(len(y) * feature, dtype=torch.float32).reshape(len(y), feature)
    return Dataset(x, y, [f"c{k}" for k in range(len(counts))])
