"""The API's torch-free layer shapes (``api.jobs.shapes``) against the models kdcore builds:
same shape for every layer path, and a refusal exactly where the builder refuses."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from api.jobs.shapes import regressor_problem, student_shapes
from kdcore.inspection import inspect_model
from kdcore.models import build_model
from kdcore.regressor import RegressorError, build_regressor
from kdcore.specs import SpecError, parse_arch

CLASSES = 3


def _specs() -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = [
        {"family": "mlp", "hidden": [5, 4], "dropout": 0.1, "input_dropout": 0.2},
        {"family": "cnn", "layers": [{"type": "linear"}]},  # vectors only
        {"family": "cnn", "layers": [{"type": "conv", "out": 2}, {"type": "linear"}]},
        {
            "family": "cnn",
            "layers": [
                {"type": "maxout_conv", "out": 3, "k": 3, "pad": 1, "name": "c"},
                {"type": "batchnorm"},
                {"type": "global_avgpool", "name": "g"},
                {"type": "dropout"},
                {"type": "maxout_linear", "out": 4, "name": "m"},
                {"type": "batchnorm"},
                {"type": "linear"},
            ],
        },
        {"family": "cnn", "layers": [{"type": "avgpool", "k": 2, "pad": 2}, {"type": "flatten"}]},
    ]
    for k, stride, pad, pool in itertools.product(
        (1, 3, 5), (1, 2), (0, 1), ("maxpool", "avgpool")
    ):
        specs.append(
            {
                "family": "cnn",
                "layers": [
                    {"type": "conv", "out": 2, "k": k, "stride": stride, "pad": pad, "name": "a"},
                    {"type": "relu"},
                    {"type": pool, "k": 2, "pad": 1},
                    {"type": pool, "k": 3, "stride": 2},
                    {"type": "flatten"},
                    {"type": "linear"},
                ],
            }
        )
    return specs


@pytest.mark.parametrize("input_shape", [(1, 6, 5), (2, 3, 3), (7,)])
def test_shapes_match_the_built_models(input_shape: tuple[int, ...]) -> None:
    for raw in _specs():
        spec = parse_arch(raw)
        try:
            model = build_model(spec, input_shape, CLASSES)
        except SpecError:
            with pytest.raises(SpecError):
                student_shapes(spec, input_shape, CLASSES)
            continue
        built = {
            layer.path: tuple(layer.shape) for layer in inspect_model(model, input_shape).layers
        }
        assert student_shapes(spec, input_shape, CLASSES) == built, (raw, input_shape)


def test_residual_families_need_images() -> None:
    spec = parse_arch({"family": "resnet", "depth": 8})
    assert student_shapes(spec, (3, 4, 4), CLASSES) is None  # not mirrored: the worker checks
    with pytest.raises(SpecError, match="needs image input"):
        student_shapes(spec, (12,), CLASSES)
    with pytest.raises(SpecError):
        build_model(spec, (12,), CLASSES)


@pytest.mark.parametrize(
    ("guided", "hint"),
    [((4,), (9,)), ((2, 5, 5), (3, 3, 3)), ((2, 3, 3), (3, 5, 5)), ((2, 5, 3), (3, 3, 5)),
     ((2, 4, 4), (16,)), ((16,), (2, 4, 4)), ((2, 4, 4), (3, 4, 4))],
)  # fmt: skip
def test_regressor_rules_match_kdcore(guided: tuple[int, ...], hint: tuple[int, ...]) -> None:
    problem = regressor_problem(guided, hint)
    if problem is None:
        build_regressor(guided, hint)
    else:
        with pytest.raises(RegressorError) as refused:
            build_regressor(guided, hint)
        assert str(refused.value) == problem
