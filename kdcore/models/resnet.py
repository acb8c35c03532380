"""CIFAR-style residual networks: ``resnet`` (He et al. 2016) and ``wrn`` (Zagoruyko 2016)."""

from __future__ import annotations

import torch
from torch import nn

from kdcore.contract import ResNetSpec, WrnSpec


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-bn-relu-conv-bn, plus shortcut, then relu."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class WideBlock(nn.Module):
    """Pre-activation wide block: bn-relu-conv-(dropout)-bn-relu-conv, plus shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        # The projection shortcut sees the pre-activated input, as in the WRN reference code.
        skip = self.shortcut(x if isinstance(self.shortcut, nn.Identity) else pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + skip


class ResNet(nn.Module):
    """conv1 → layer1..3 (n blocks each, strides 1, 2, 2) → pool → fc."""

    def __init__(self, spec: ResNetSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        n = (spec.depth - 2) // 6
        widths = [16 * spec.width, 32 * spec.width, 64 * spec.width]
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_ch = widths[0]
        stages = []
        for i, w in enumerate(widths):
            blocks = [
                BasicBlock(in_ch if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch = w
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16w, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64w, H/4, W/4)
        return self.fc(self.flatten(self.pool(x)))  # (B, classes)


class WideResNet(nn.Module):
    """conv1 → block1..3 (n wide blocks each) → bn-relu → pool → fc."""

    def __init__(self, spec: WrnSpec, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        n = (spec.depth - 4) // 6
        widths = [16 * spec.width, 32 * spec.width, 64 * spec.width]
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        in_ch = 16
        stages = []
        for i, w in enumerate(widths):
            blocks = [
                WideBlock(in_ch if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1, spec.dropout)
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch = w
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))  # (B, 64k, H/4, W/4)
        x = self.relu(self.bn(x))
        return self.fc(self.flatten(self.pool(x)))  # (B, classes)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
