"""Input preprocessing: one definition for training, evaluation and exported students.

A :class:`Normalizer` turns a raw sample ``x`` (on the data's own scale, 0..255 for 8-bit
images) into the model's input ``((x * scale) - mean) / std``. It is fitted on the training
data, saved as a plain dict in checkpoints and as ``preprocess`` in an export's
``student.json`` (:meth:`Normalizer.to_dict`), and applied by the training loop and
evaluation (calling it) and inside exported programs (:class:`kdcore.export.Preprocessed`).
All of them get their tensors from :meth:`Normalizer.stats` and compute with
:func:`normalize`, so the rules for the values, the dict format and the arithmetic exist
once, and an exported program normalizes exactly as training did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kdcore.data.dataset import DataError, Dataset

__all__ = ["Normalizer", "normalize"]

# float64 elements per chunk in Normalizer.fit: 32 MiB of temporaries at most.
_FIT_CHUNK_ELEMENTS = 1 << 22
_KEYS = ("scale", "mean", "std")


def normalize(x: torch.Tensor, scale: float, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``((x * scale) - mean) / std``: the preprocessing arithmetic, for every caller.

    Args:
        x: a raw float batch ``(B, *sample_shape)``; not modified.
        scale: :attr:`Normalizer.scale`.
        mean: from :meth:`Normalizer.stats`, on ``x``'s device.
        std: from :meth:`Normalizer.stats`, on ``x``'s device.
    """
    return (x * scale - mean) / std


def denormalize(
    x: torch.Tensor, scale: float, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """The inverse of :func:`normalize`: ``(x * std + mean) / scale``."""
    return (x * std + mean) / scale


@dataclass(frozen=True)
class Normalizer:
    """Maps raw batches to ``((x * scale) - mean) / std`` in float32.

    Attributes:
        scale: ``1/255`` for uint8 data, ``1.0`` for float data (fitted); finite, non-zero.
        mean: one value, broadcast everywhere, or one per channel: the first dimension of a
            sample (image channels; features of a vector). :meth:`fit` gives one per channel
            for images and one value for vectors. After scaling.
        std: like ``mean``; finite and non-zero (fitted values are at least ``1e-6``). When
            both hold several values, they hold the same number.
    """

    scale: float
    mean: list[float]
    std: list[float]
    _cache: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        n_mean, n_std = len(self.mean), len(self.std)
        if not n_mean or not n_std or (n_mean != n_std and 1 not in (n_mean, n_std)):
            raise ValueError(
                "normalizer mean and std each need one value or one per channel (the same "
                f"number when both have several), got {n_mean} and {n_std}"
            )
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"normalizer scale must be a finite non-zero number, got {self.scale}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"normalizer {name} must be finite numbers, got {values}")
        if any(v == 0 for v in self.std):
            raise ValueError(f"normalizer std must be non-zero, got {self.std}")

    @classmethod
    def fit(cls, ds: Dataset) -> Normalizer:
        """Mean and std of ``ds.x * scale``: per channel for images, one value for vectors.

        Computed in float64, chunk by chunk (two passes), so no float copy of the data is made.
        """
        if len(ds) == 0:
            raise DataError("cannot fit a normalizer on an empty dataset")
        x = ds.x
        scale = 1.0 / 255.0 if x.dtype == torch.uint8 else 1.0
        dims = (0, 2, 3) if x.ndim == 4 else (0, 1)
        per_channel = x.ndim == 4
        rows = max(1, _FIT_CHUNK_ELEMENTS // max(1, math.prod(ds.input_shape)))
        count = x.numel() // (x.shape[1] if per_channel else 1)
        # Two passes (mean, then squared deviations) stay accurate for data far from zero.
        total = sum(chunk.to(torch.float64).sum(dim=dims) for chunk in x.split(rows))
        mean = torch.as_tensor(total) / count  # (C,) or ()
        centre = mean.reshape(1, -1, 1, 1) if per_channel else mean
        sq = sum(
            (chunk.to(torch.float64) - centre).square_().sum(dim=dims) for chunk in x.split(rows)
        )
        std = (torch.as_tensor(sq) / count).sqrt() * scale
        std = std.clamp_min(1e-6)
        mean = mean * scale
        return cls(scale=scale, mean=mean.reshape(-1).tolist(), std=std.reshape(-1).tolist())

    def stats(self, sample_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and ``std`` as float32 CPU tensors that broadcast over one sample.

        Each is a scalar ``()`` when it holds one value, else ``(C, 1, ..., 1)``: one value per
        channel, the sample's first dimension (``(C, 1, 1)`` for images, ``(F,)`` for vectors).

        Args:
            sample_shape: one sample's shape, e.g. ``(3, 32, 32)``.

        Raises:
            ValueError: the values are per channel but ``sample_shape`` has another number of
                channels.
        """
        return _stat("mean", self.mean, sample_shape), _stat("std", self.std, sample_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize a raw batch ``(B, *sample_shape)`` (``uint8`` or float, any device) to
        float32; ``x`` is not modified."""
        channels = max(len(self.mean), len(self.std))
        if channels > 1 and (x.ndim < 2 or x.shape[1] != channels):
            raise ValueError(
                f"normalizer is for {channels}-channel images (B, C, H, W) or {channels}-value "
                f"vectors (B, F), got a batch of shape {tuple(x.shape)}"
            )
        return normalize(x.to(torch.float32), self.scale, *self._stats_for(x))

    def _stats_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`stats` for batches like ``x``, on its device (made once per device and rank)."""
        key = (x.device, x.ndim)
        cached = self._cache.get(key)
        if cached is None:
            mean, std = self.stats(tuple(x.shape[1:]))
            cached = self._cache[key] = (mean.to(x.device), std.to(x.device))
        return cached

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Raw float samples back from a normalized batch (augmented or not)."""
        return denormalize(x, self.scale, *self._stats_for(x))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, for checkpoints and exports."""
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        """Inverse of :meth:`to_dict`; the values are checked as the constructor does."""
        unknown = set(d) - set(_KEYS)
        if unknown:
            raise ValueError(f"unknown normalizer keys {sorted(unknown)}; valid: scale, mean, std")
        try:
            scale = float(d["scale"])
            mean = [float(v) for v in d["mean"]]
            std = [float(v) for v in d["std"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"normalizer needs {{'scale': float, 'mean': [float], 'std': [float]}}, "
                f"got {d!r} ({exc})"
            ) from exc
        return cls(scale=scale, mean=mean, std=std)


def _stat(name: str, values: list[float], sample_shape: Sequence[int]) -> torch.Tensor:
    t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if t.numel() == 1:
        return t.reshape(())
    channels = sample_shape[0] if len(sample_shape) else 1
    if t.numel() != channels:
        raise ValueError(
            f"normalizer {name} needs 1 value or {channels} (one per channel of input shape "
            f"{list(sample_shape)}), got {t.numel()}"
        )
    return t.reshape(-1, *([1] * (len(sample_shape) - 1)))  # (C, 1, ..., 1)
