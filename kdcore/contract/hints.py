"""``"hint": "auto"``: the FitNets layer pair chosen from the two models' layer shapes.

The rule (one for the service's submit check and the engine; torch-free):

- **Image models** (layers with ``(C, H, W)`` outputs): the largest spatial size ``H·W``
  that both models have; the hint is the teacher's *last* layer at that size, the guided
  layer the student's last layer at that size, in module order. That is the end of the
  first stage: the output of the blocks that run before the first downsampling, where both
  models still see the image at full resolution. The regressor is then a 1×1 convolution.
- **Vector models** (MLPs): the last hidden layer of each (the last ``(F,)`` layer before the
  logits), since there is no "first stage" to speak of.

Why early, not FitNets' middle: FitNets' middle hints were for students too deep and thin
to train from labels (Romero et al. §4.1). Students that train well from scratch, as the
service's usually are, did better with the hint at the first block: on CIFAR-10 (the
``examples/cifar10`` pair, docs/results.md) a middle hint left FitNets 4.3 points under KD,
and a first-block hint put it 0.5 above. A middle hint pins the student's middle layer to
a wider network's features.

The limit: models that keep the full resolution almost to the end get a late hint (on the
8×8 digits example, the last convolution before pooling), which pins most of the student to
the teacher; give such models' layers explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from kdcore.contract.config import DistillConfig, HintConfig
from kdcore.contract.errors import SpecError
from kdcore.contract.registry import Shape


@dataclass(frozen=True)
class HintChoice:
    teacher_layer: str
    student_layer: str
    reason: str


def choose_hint(
    student: Mapping[str, Shape], teacher: Mapping[str, Shape], input_shape: Shape
) -> HintChoice:
    """The hint and guided layers for two models' layer shapes (module order kept) on
    samples of ``input_shape``.

    Raises:
        SpecError (``loc`` ``config.hint``): no layer pair fits the rule; the message says
            to give the layers.
    """
    s_maps, t_maps = _maps(student), _maps(teacher)
    common = {size for size, _ in s_maps.values()} & {size for size, _ in t_maps.values()}
    if common:
        size = max(common, key=math.prod)
        t_path = _last_at(t_maps, size)
        s_path = _last_at(s_maps, size)
        return HintChoice(
            t_path,
            s_path,
            f"the last layers at {size[0]}×{size[1]}, the largest spatial size both models "
            "have (the end of their first stage)",
        )
    numel = math.prod(input_shape)
    t_vec, s_vec = _last_hidden_vector(teacher, numel), _last_hidden_vector(student, numel)
    if t_vec is not None and s_vec is not None and not (t_maps or s_maps):
        return HintChoice(t_vec, s_vec, "the last hidden layers (vector models)")
    raise SpecError(
        'config.hint: "auto" found no layer pair: the two models share no spatial size of '
        'their (C, H, W) layers; give "teacher_layer" and "student_layer" (paths from '
        "`kdserve inspect` or GET /v1/teachers/{id})",
        loc=("config", "hint"),
    )


def resolve_hint(
    config: DistillConfig,
    student: Mapping[str, Shape],
    teacher: Mapping[str, Shape],
    input_shape: Shape,
) -> tuple[DistillConfig, HintChoice | None]:
    """``config`` with an ``"auto"`` hint replaced by :func:`choose_hint`'s layers (its
    ``epochs`` and ``lr`` kept), and the choice; unchanged (None) otherwise."""
    hint = config.hint
    if hint is None or not hint.auto:
        return config, None
    choice = choose_hint(student, teacher, input_shape)
    chosen = HintConfig(
        teacher_layer=choice.teacher_layer,
        student_layer=choice.student_layer,
        epochs=hint.epochs,
        lr=hint.lr,
    )
    return config.model_copy(update={"hint": chosen}), choice


def _maps(shapes: Mapping[str, Shape]) -> dict[str, tuple[tuple[int, int], int]]:
    """Image layers: path → ((H, W), position in module order)."""
    return {
        path: ((int(s[1]), int(s[2])), i)
        for i, (path, s) in enumerate(shapes.items())
        if len(s) == 3 and s[1] * s[2] > 1  # a pooled (C, 1, 1) map is a vector in disguise
    }


def _last_at(maps: Mapping[str, tuple[tuple[int, int], int]], size: tuple[int, int]) -> str:
    return max((i, path) for path, (s, i) in maps.items() if s == size)[1]


def _last_hidden_vector(shapes: Mapping[str, Shape], input_size: int) -> str | None:
    """The last ``(F,)`` layer before the logits (the last layer), leading flattens of the
    input (``F`` = the input's size) excluded."""
    paths = list(shapes)[:-1]
    while paths and tuple(shapes[paths[0]]) == (input_size,):
        paths = paths[1:]
    vectors = [p for p in paths if len(shapes[p]) == 1]
    return vectors[-1] if vectors else None
