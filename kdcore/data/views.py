"""Augmented views described by their parameters, and a seeded bank of them.

A *view* of an image sample is what the augmentation policy makes of it: a crop after zero
padding and a horizontal flip. :class:`ViewPolicy` splits augmentation into drawing a view's
parameters (:meth:`ViewPolicy.draw`) and applying them (:meth:`ViewPolicy.apply`), so the
random path (:func:`kdcore.data.augment`, one fresh view per sample and step) and the bank
share the pixel arithmetic.

A :class:`ViewBank` fixes ``K`` views per training sample, drawn once from a generator seeded
from the config's seed, and a rule choosing each epoch's view: sample ``i`` shows view
``(start[i] + epoch - 1) mod K``, so over ``K`` epochs it shows each of its views once. The
teacher's outputs on the bank's views can then be computed once and replayed while the
student trains on exactly the same pixels (FKD, Shen & Xing 2022; "consistent teaching",
Beyer et al. 2022): see :mod:`kdcore.cache`.

A view's parameters are three integers: ``(row, col, flip)``, the crop's offsets into the
padded image (``crop_padding`` on each side; ``(p, p)`` is the uncropped image) and 1 to
mirror left-right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["VIEWS_SEED_SALT", "ViewBank", "ViewPolicy"]

# Added to the config seed for the bank's generator, so its stream is not the split's.
VIEWS_SEED_SALT = 0x7EAC4E55


@dataclass(frozen=True)
class ViewPolicy:
    """An augmentation policy: random crop after zero padding, and random flip."""

    crop_padding: int
    crop: bool
    flip: bool

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")

    @classmethod
    def from_augment(cls, augment: str, crop_padding: int, *, images: bool = True) -> ViewPolicy:
        """The policy of a config's ``augment`` (``none``, ``flip``, ``crop``, ``crop_flip``);
        vector data (``images`` False) is never augmented."""
        return cls(
            crop_padding=crop_padding,
            crop=images and "crop" in augment,
            flip=images and "flip" in augment,
        )

    @property
    def crops(self) -> bool:
        return self.crop and self.crop_padding > 0

    @property
    def active(self) -> bool:
        """Whether a view can differ from the sample itself."""
        return self.crops or self.flip

    def identity(self, n: int) -> torch.Tensor:
        """``(n, 3)`` int64 parameters of the sample itself: centred crop, no flip."""
        params = torch.zeros(n, 3, dtype=torch.int64)
        params[:, :2] = self.crop_padding
        return params

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` views' parameters, ``(n, 3)`` int64 ``(row, col, flip)`` on the CPU.

        Crop offsets first (one ``randint`` of shape ``(2, n)``), then flips (one ``rand``),
        each only when the policy uses it: the draws :func:`kdcore.data.augment` has always
        made, so its output and the generator's state after it are unchanged.
        """
        params = self.identity(n)
        if self.crops:
            p = self.crop_padding
            params[:, :2] = torch.randint(0, 2 * p + 1, (2, n), generator=generator).T
        if self.flip:
            params[:, 2] = torch.rand(n, generator=generator) < 0.5
        return params

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The views ``params`` of a batch.

        Args:
            x: ``(B, C, H, W)`` batch on any device; not modified.
            params: ``(B, 3)`` integer ``(row, col, flip)`` per sample, any device.

        Returns:
            A ``(B, C, H, W)`` batch (``x`` itself when the policy is inactive).
        """
        if x.ndim != 4:
            raise ValueError(f"views need an image batch (B, C, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        params = params.to(device=x.device, dtype=torch.int64)  # (B, 3)
        out = x
        if self.crops:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p)
            rows = params[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
            cols = params[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
            out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
            out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # (B, C, H, W)
        if self.flip:
            mirror = params[:, 2].bool()  # (B,)
            out = torch.where(mirror[:, None, None, None], out.flip(3), out)
        return out


@dataclass(frozen=True)
class ViewBank:
    """``K`` fixed views per sample, and which one each epoch shows.

    Attributes:
        policy: the augmentation the views come from.
        params: ``(N, K, 3)`` int16 ``(row, col, flip)`` per sample and view.
        start: ``(N,)`` int64, the view each sample shows in epoch 1.
    """

    policy: ViewPolicy
    params: torch.Tensor
    start: torch.Tensor

    @classmethod
    def draw(cls, policy: ViewPolicy, n: int, k: int, seed: int) -> ViewBank:
        """Draw a bank of ``k`` views for ``n`` samples from ``seed`` alone.

        An inactive policy has one view, the sample itself, whatever ``k`` is.
        """
        if k < 1:
            raise ValueError(f"a view bank needs at least one view per sample, got {k}")
        if not policy.active:
            return cls(policy, policy.identity(n)[:, None].to(torch.int16), torch.zeros(n).long())
        gen = torch.Generator().manual_seed((seed + VIEWS_SEED_SALT) % 2**63)
        params = policy.draw(n * k, gen).view(k, n, 3).transpose(0, 1)  # (N, K, 3)
        start = torch.randint(0, k, (n,), generator=gen)  # (N,)
        return cls(policy, params.to(torch.int16).contiguous(), start)

    @property
    def views(self) -> int:
        """``K``, views per sample."""
        return int(self.params.shape[1])

    def to(self, device: torch.device) -> ViewBank:
        return ViewBank(self.policy, self.params.to(device), self.start.to(device))

    def choose(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """The view samples ``idx`` show in ``epoch`` (1-based): ``(start + epoch - 1) mod K``.

        A pure function of the bank and the epoch (no random draw), so a resumed run shows
        the same views as an uninterrupted one.
        """
        return (self.start[idx] + (epoch - 1)) % self.views  # (B,)

    def apply(self, x: torch.Tensor, idx: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """View ``view[j]`` of sample ``idx[j]``, for a batch ``x`` of those samples."""
        if not self.policy.active:
            return x
        return self.policy.apply(x, self.params[idx, view])
