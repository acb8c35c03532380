"""Datasets in memory: the :class:`Dataset` type, its stratified split, index batches and
augmentation.

Nothing here reads files: :mod:`kdcore.data.readers` turns untrusted files into a
:class:`Dataset`, and :mod:`kdcore.data.normalizer` holds the input preprocessing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from kdcore.data.views import ViewPolicy

__all__ = ["DataError", "Dataset", "augment", "batches"]


class DataError(ValueError):
    """Bad or unreadable data; the message says what to fix."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Samples and labels held in memory.

    Attributes:
        x: ``(N, C, H, W)`` images or ``(N, F)`` vectors, ``uint8`` or ``float32``, on the CPU,
            contiguous.
        y: ``(N,)`` ``int64`` labels in ``[0, num_classes)``.
        classes: class names in label order.
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        # Cheap invariant checks only; label ranges are checked by the loader.
        x, y = self.x, self.y
        if x.ndim not in (2, 4):
            raise DataError(f"x must be (N, C, H, W) or (N, F), got shape {tuple(x.shape)}")
        if x.dtype not in (torch.uint8, torch.float32):
            raise DataError(f"x must be uint8 or float32, got {x.dtype}")
        if x.device.type != "cpu" or not x.is_contiguous():
            raise DataError("x must be a contiguous CPU tensor")
        if y.ndim != 1 or y.dtype != torch.int64:
            raise DataError(f"y must be a 1-D int64 tensor, got {y.dtype} {tuple(y.shape)}")
        if x.shape[0] != y.shape[0]:
            raise DataError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape: ``(C, H, W)`` or ``(F,)``."""
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor) -> Dataset:
        """The samples at ``index`` (int64 positions or a boolean mask), as a new dataset."""
        index = index.to(device="cpu")
        return Dataset(self.x[index].contiguous(), self.y[index].contiguous(), list(self.classes))

    def split(self, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """Hold out a stratified ``fraction`` of the samples, e.g. for validation.

        Each class gives ``fraction`` of its samples (largest remainders round), so the
        held-out part has ``round(fraction * N)`` samples, except that when ``fraction > 0``
        every class with at least two samples gives at least one, and every class keeps at
        least one in the rest; those two rules win over the exact total.

        Args:
            fraction: share to hold out, in ``[0, 1)``; ``0`` returns ``(self, empty)``.
            seed: which samples are held out; the same seed gives the same split.

        Returns:
            ``(rest, held_out)``, disjoint, each in the original sample order.
        """
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"split fraction must be in [0, 1), got {fraction}")
        n = len(self)
        if fraction == 0.0 or n == 0:
            return self, self.subset(torch.empty(0, dtype=torch.int64))
        counts = torch.bincount(self.y, minlength=self.num_classes)  # (K,)
        quota = torch.from_numpy(_held_out_quota(counts.numpy(), fraction, round(fraction * n)))

        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=gen)  # (N,)
        labels = self.y[perm]
        order = torch.argsort(labels, stable=True)
        idx, labels = perm[order], labels[order]  # grouped by class, shuffled within a class
        starts = torch.cumsum(counts, 0) - counts  # (K,)
        rank = torch.arange(n) - starts[labels]  # position within its class
        held = rank < quota[labels]
        rest_idx = torch.sort(idx[~held]).values
        held_idx = torch.sort(idx[held]).values
        return self.subset(rest_idx), self.subset(held_idx)


def _held_out_quota(
    counts: npt.NDArray[np.int64], fraction: float, target: int
) -> npt.NDArray[np.int64]:
    """Per-class held-out counts summing to ``target`` where the per-class rules allow."""
    ideal = fraction * counts.astype(np.float64)
    cap = np.maximum(counts - 1, 0)  # keep one of each class for training
    quota = np.minimum(np.floor(ideal).astype(np.int64), cap)
    floor_one = counts >= 2
    quota[floor_one] = np.maximum(quota[floor_one], 1)
    target = max(min(target, int(cap.sum())), int(floor_one.sum()))
    # Largest remainder first; ties go to the lower label so the split is reproducible.
    while quota.sum() < target:
        room = quota < cap
        gap = np.where(room, ideal - quota, -np.inf)
        quota[int(np.argmax(gap))] += 1
    while quota.sum() > target:
        spare = quota > np.where(floor_one, 1, 0)
        excess = np.where(spare, quota - ideal, -np.inf)
        quota[int(np.argmax(excess))] -= 1
    return quota


def augment(
    x: torch.Tensor,
    *,
    crop_padding: int,
    flip: bool,
    crop: bool,
    generator: torch.Generator,
    cutout: int = 0,
) -> torch.Tensor:
    """Random crop after zero padding, random horizontal flip and cutout, per sample.

    Random numbers are drawn on the CPU from ``generator`` (crop offsets, flips, cutouts),
    so the result depends only on the generator's state, not on ``x``'s device. This is
    :meth:`ViewPolicy.draw` then :meth:`ViewPolicy.apply`, one fresh view per sample: the
    teacher cache's view bank (:class:`kdcore.data.views.ViewBank`) applies stored views
    with the same arithmetic.

    Args:
        x: ``(B, C, H, W)`` batch on any device; not modified.
        crop_padding: zero padding on each side before cropping back to ``(H, W)``.
        flip: mirror each sample left-right with probability 0.5.
        crop: apply the random crop.
        generator: a CPU generator.
        cutout: side of the square set to zero (0: none).

    Returns:
        A ``(B, C, H, W)`` batch.
    """
    if x.ndim != 4:
        raise ValueError(f"augment needs an image batch (B, C, H, W), got {tuple(x.shape)}")
    policy = ViewPolicy(crop_padding=crop_padding, crop=crop, flip=flip, cutout=cutout)
    if not policy.active:
        return x
    return policy.apply(x, policy.draw(x.shape[0], generator, (x.shape[2], x.shape[3])))


def batches(
    n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index batches covering ``0 .. n-1`` once each; the last one may be smaller.

    Args:
        n: number of samples.
        batch_size: indices per batch.
        shuffle: visit in a random order drawn with ``torch.randperm(n, generator=generator)``.
        generator: source of the order when shuffling (``None``: torch's global generator).

    Yields:
        ``int64`` index tensors.
    """
    if n < 0 or batch_size < 1:
        raise ValueError(f"batches needs n >= 0 and batch_size >= 1, got {n}, {batch_size}")
    if n == 0:
        return
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from order.split(batch_size)
