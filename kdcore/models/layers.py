"""Building blocks that torch.nn does not ship: maxout units (Goodfellow et al. 2013)."""

from __future__ import annotations

import torch
from torch import nn


class MaxoutConv2d(nn.Module):
    """A convolution with ``pieces`` linear pieces per output channel, max over the pieces."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        pieces: int = 2,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.pieces = pieces
        self.conv = nn.Conv2d(
            in_channels,
            out_channels * pieces,
            kernel_size,
            stride=stride,
            padding=padding,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, C*pieces, H, W)
        return y.unflatten(1, (-1, self.pieces)).amax(dim=2)  # (B, C, H, W)


class MaxoutLinear(nn.Module):
    """A linear layer with ``pieces`` pieces per output unit, max over the pieces."""

    def __init__(self, in_features: int, out_features: int, *, pieces: int = 2) -> None:
        super().__init__()
        self.pieces = pieces
        self.linear = nn.Linear(in_features, out_features * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)  # (B, F*pieces)
        return y.unflatten(1, (-1, self.pieces)).amax(dim=2)  # (B, F)
