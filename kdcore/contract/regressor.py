"""The FitNets regressor rule: which guided and hint layers can be joined, and how.

One rule for the service's submit-time check (no torch) and for
:func:`kdcore.regressor.build_regressor` (which turns a plan into a module).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kdcore.contract.config import HintConfig
from kdcore.contract.errors import SpecError
from kdcore.contract.registry import Shape, describe_missing_layer


class RegressorError(SpecError):
    """Guided and hint layers whose shapes no regressor can join; the message says why."""


@dataclass(frozen=True)
class RegressorPlan:
    """The regressor ``r`` of FitNets §2.2 for per-sample shapes guided → hint.

    - ``conv``: image maps, guided at least as large as the hint: kernel
      ``k_i = N_g,i − N_h,i + 1`` and no padding, so that ``N_g − k + 1 = N_h``, with
      ``O_h`` output channels (1×1 when the spatial sizes match).
    - ``conv_transpose``: guided map smaller than the hint (not covered by the paper): the
      transposed convolution with ``k_i = N_h,i − N_g,i + 1``, whose output is
      ``N_g + k − 1 = N_h``; the mirror of the paper's rule with the same weight count, and
      it keeps the hint itself untouched (pooling the hint would change what is taught).
    - ``linear``: vectors ``(F_g,)`` → ``(F_h,)``.
    """

    kind: Literal["linear", "conv", "conv_transpose"]
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)

    @property
    def params(self) -> int:
        """``k1·k2·O_h·O_g`` weights plus ``O_h`` biases."""
        return math.prod(self.kernel) * self.in_channels * self.out_channels + self.out_channels


def plan_regressor(guided: Shape, hint: Shape) -> RegressorPlan:
    """The regressor joining ``guided`` (O_g, N_g1, N_g2) or (F_g,) to ``hint``.

    Raises:
        RegressorError: the shapes cannot be joined; the message says which layers to pick.
    """
    g, h = tuple(guided), tuple(hint)
    if len(g) == 1 and len(h) == 1:
        return RegressorPlan("linear", g[0], h[0])
    if len(g) == 3 and len(h) == 3:
        (o_g, *n_g), (o_h, *n_h) = g, h
        if all(a >= b for a, b in zip(n_g, n_h, strict=True)):
            return RegressorPlan("conv", o_g, o_h, (n_g[0] - n_h[0] + 1, n_g[1] - n_h[1] + 1))
        if all(a <= b for a, b in zip(n_g, n_h, strict=True)):
            kernel = (n_h[0] - n_g[0] + 1, n_h[1] - n_g[1] + 1)
            return RegressorPlan("conv_transpose", o_g, o_h, kernel)
        raise RegressorError(
            f"guided map {g} is larger than hint map {h} in one direction and smaller in the "
            "other; pick layers whose spatial sizes compare the same way in both"
        )
    if {len(g), len(h)} == {1, 3}:
        raise RegressorError(
            f"cannot regress guided shape {g} onto hint shape {h}: pick two image layers "
            f"(C, H, W) or two vector layers (F,), e.g. both before or both after the flatten "
            f"(hint has {math.prod(h)} values)"
        )
    raise RegressorError(f"unsupported layer shapes: guided {g}, hint {h}")


def check_hint(
    hint: HintConfig, student: Mapping[str, Shape], teacher: Mapping[str, Shape]
) -> RegressorPlan:
    """Check a FitNets layer pair against the two models' layer shapes.

    Args:
        hint: the config's ``hint``.
        student: the student's layer shapes (:func:`kdcore.contract.layer_shapes`).
        teacher: the teacher's layer shapes (from its inspection).

    Raises:
        SpecError: ``loc`` names the field; the message names the nearest valid paths, or
            why the shapes do not fit.
    """
    if hint.teacher_layer not in teacher:
        raise SpecError(
            "config.hint.teacher_layer: " + describe_missing_layer(hint.teacher_layer, [*teacher]),
            loc=("config", "hint", "teacher_layer"),
        )
    if hint.student_layer not in student:
        raise SpecError(
            "config.hint.student_layer: " + describe_missing_layer(hint.student_layer, [*student]),
            loc=("config", "hint", "student_layer"),
        )
    guided, hinted = tuple(student[hint.student_layer]), tuple(teacher[hint.teacher_layer])
    for side, path, shape in (
        ("teacher", hint.teacher_layer, hinted),
        ("student", hint.student_layer, guided),
    ):
        if not shape:
            raise SpecError(
                f"config.hint.{side}_layer: layer {path!r} gives no tensor output (it does not "
                "run in the forward pass, or returns several values); pick another layer",
                loc=("config", "hint", f"{side}_layer"),
            )
    try:
        return plan_regressor(guided, hinted)
    except RegressorError as exc:
        raise SpecError(
            f"config.hint: student layer {hint.student_layer!r} {guided} and teacher layer "
            f"{hint.teacher_layer!r} {hinted} do not fit: {exc}",
            loc=("config", "hint"),
        ) from exc
