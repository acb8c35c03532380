"""Augmented views described by their parameters, and a seeded bank of them.

A *view* of an image sample is what the augmentation policy makes of it: a crop after zero
padding, a horizontal flip, and a cutout (a square set to zero, DeVries & Taylor 2017).
:class:`ViewPolicy` splits augmentation into drawing a view's parameters
(:meth:`ViewPolicy.draw`) and applying them (:meth:`ViewPolicy.apply`), so the random path
(:func:`kdcore.data.augment`, one fresh view per sample and step) and the bank share the
pixel arithmetic.

A :class:`ViewBank` fixes ``K`` views per training sample, drawn once from a generator seeded
from the config's seed, and a rule choosing each epoch's view: sample ``i`` shows view
``(start[i] + epoch - 1) mod K``, so over ``K`` epochs it shows each of its views once. The
teacher's outputs on the bank's views can then be computed once and replayed while the
student trains on exactly the same pixels (FKD, Shen & Xing 2022; "consistent teaching",
Beyer et al. 2022): see :mod:`kdcore.cache`.

A view's parameters are five integers (:data:`VIEW_PARAMS`): ``(row, col, flip, cut_row,
cut_col)``, the crop's offsets into the padded image (``crop_padding`` on each side; ``(p, p)``
is the uncropped image), 1 to mirror left-right, and the top-left corner of the cutout square
in the cropped and flipped image (it may start above or left of the image: the square is
clipped, as in the paper, whose centre is uniform over the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["VIEWS_SEED_SALT", "VIEW_PARAMS", "ViewBank", "ViewPolicy"]

# Added to the config seed for the bank's generator, so its stream is not the split's.
VIEWS_SEED_SALT = 0x7EAC4E55
# Integers per view: (row, col, flip, cut_row, cut_col).
VIEW_PARAMS = 5


@dataclass(frozen=True)
class ViewPolicy:
    """An augmentation policy: random crop after zero padding, random flip, and cutout.

    Attributes:
        crop_padding: zero padding on each side before cropping back to the image's size.
        crop: apply the random crop.
        flip: mirror left-right with probability 0.5.
        cutout: side of the square set to zero (0: no cutout).
    """

    crop_padding: int
    crop: bool
    flip: bool
    cutout: int = 0

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout < 0:
            raise ValueError(
                f"crop_padding and cutout must be >= 0, got {self.crop_padding}, {self.cutout}"
            )

    @classmethod
    def from_augment(
        cls, augment: str, crop_padding: int, *, cutout: int = 0, images: bool = True
    ) -> ViewPolicy:
        """The policy of a config's ``augment`` (``none``, ``flip``, ``crop``, ``crop_flip``)
        and ``cutout``; vector data (``images`` False) is never augmented."""
        return cls(
            crop_padding=crop_padding,
            crop=images and "crop" in augment,
            flip=images and "flip" in augment,
            cutout=cutout if images else 0,
        )

    @property
    def crops(self) -> bool:
        return self.crop and self.crop_padding > 0

    @property
    def active(self) -> bool:
        """Whether a view can differ from the sample itself."""
        return self.crops or self.flip or self.cutout > 0

    def identity(self, n: int) -> torch.Tensor:
        """``(n, 5)`` int64 parameters of the sample itself: centred crop, no flip, and a
        cutout square that lies wholly outside the image (above and left of it)."""
        params = torch.zeros(n, VIEW_PARAMS, dtype=torch.int64)
        params[:, :2] = self.crop_padding
        params[:, 3:] = -max(self.cutout, 1)
        return params

    def draw(self, n: int, generator: torch.Generator, size: tuple[int, int]) -> torch.Tensor:
        """Draw ``n`` views' parameters, ``(n, 5)`` int64 on the CPU, for images of ``size``
        ``(H, W)``.

        Crop offsets first (one ``randint`` of shape ``(2, n)``), then flips (one ``rand``),
        then cutout centres (one ``randint`` per axis), each only when the policy uses it:
        without cutout these are the draws :func:`kdcore.data.augment` has always made, so
        its output and the generator's state after it are unchanged.
        """
        params = self.identity(n)
        if self.crops:
            p = self.crop_padding
            params[:, :2] = torch.randint(0, 2 * p + 1, (2, n), generator=generator).T
        if self.flip:
            params[:, 2] = torch.rand(n, generator=generator) < 0.5
        if self.cutout > 0:
            half = self.cutout // 2
            params[:, 3] = torch.randint(0, size[0], (n,), generator=generator) - half
            params[:, 4] = torch.randint(0, size[1], (n,), generator=generator) - half
        return params

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The views ``params`` of a batch.

        Args:
            x: ``(B, C, H, W)`` batch on any device; not modified.
            params: ``(B, 5)`` integer view parameters per sample, any device.

        Returns:
            A ``(B, C, H, W)`` batch (``x`` itself when the policy is inactive).
        """
        if x.ndim != 4:
            raise ValueError(f"views need an image batch (B, C, H, W), got {tuple(x.shape)}")
        b, c, h, w = x.shape
        params = params.to(device=x.device, dtype=torch.int64)  # (B, 5)
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
        if self.cutout > 0:
            s = self.cutout
            rows = torch.arange(h, device=x.device) - params[:, 3, None]  # (B, H)
            cols = torch.arange(w, device=x.device) - params[:, 4, None]  # (B, W)
            inside = ((rows >= 0) & (rows < s))[:, :, None] & ((cols >= 0) & (cols < s))[:, None]
            out = out.masked_fill(inside[:, None], 0.0)  # (B, C, H, W); 0 is the mean
        return out


@dataclass(frozen=True)
class ViewBank:
    """``K`` fixed views per sample, and which one each epoch shows.

    Attributes:
        policy: the augmentation the views come from.
        params: ``(N, K, 5)`` int16 view parameters per sample and view.
        start: ``(N,)`` int64, the view each sample shows in epoch 1.
    """

    policy: ViewPolicy
    params: torch.Tensor
    start: torch.Tensor

    @classmethod
    def draw(cls, policy: ViewPolicy, n: int, k: int, seed: int, size: tuple[int, int]) -> ViewBank:
        """Draw a bank of ``k`` views for ``n`` samples of ``size`` ``(H, W)`` from ``seed``
        alone.

        An inactive policy has one view, the sample itself, whatever ``k`` is.
        """
        if k < 1:
            raise ValueError(f"a view bank needs at least one view per sample, got {k}")
        if not policy.active:
            return cls(policy, policy.identity(n)[:, None].to(torch.int16), torch.zeros(n).long())
        gen = torch.Generator().manual_seed((seed + VIEWS_SEED_SALT) % 2**63)
        params = policy.draw(n * k, gen, size).view(k, n, VIEW_PARAMS).transpose(0, 1)  # (N,K,5)
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
