"""The FitNets regressor as a module: the rule is :func:`kdcore.contract.plan_regressor`."""

from __future__ import annotations

from torch import nn

from kdcore.contract import RegressorError, plan_regressor

__all__ = ["RegressorError", "build_regressor"]


def build_regressor(guided_shape: tuple[int, ...], hint_shape: tuple[int, ...]) -> nn.Module:
    """The regressor ``r`` of FitNets §2.2 mapping the guided layer's output onto the hint.

    Raises:
        RegressorError: no regressor joins the two shapes.
    """
    plan = plan_regressor(guided_shape, hint_shape)
    match plan.kind:
        case "linear":
            return nn.Linear(plan.in_channels, plan.out_channels)
        case "conv":
            return nn.Conv2d(plan.in_channels, plan.out_channels, kernel_size=plan.kernel)
        case "conv_transpose":
            return nn.ConvTranspose2d(plan.in_channels, plan.out_channels, kernel_size=plan.kernel)
