"""The optimizer and learning-rate schedule a config asks for."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from kdcore.contract import DistillConfig


def build_optimizer(
    cfg: DistillConfig, params: Iterable[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``params`` at ``lr`` (a stage's, not always ``cfg.lr``)."""
    match cfg.optimizer:
        case "sgd":
            return torch.optim.SGD(
                params,
                lr=lr,
                momentum=cfg.momentum,
                nesterov=cfg.nesterov,
                weight_decay=cfg.weight_decay,
            )
        case "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
        case "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        case "rmsprop":
            return torch.optim.RMSprop(
                params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # pragma: no cover


def build_scheduler(
    cfg: DistillConfig, opt: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``cfg.schedule`` over a stage's ``total_steps``.

    Stepped once per batch, so short runs get a smooth schedule too; ``milestones`` are
    fractions of ``total_steps``.
    """
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if cfg.schedule == "multistep":
        milestones = sorted({max(1, round(m * total_steps)) for m in cfg.milestones})
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
