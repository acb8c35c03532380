"""Each family's torch-free layer shapes against the models kdcore builds: the same paths in
``named_modules()`` order, the same shape for every path, and a refusal exactly where
building refuses; the regressor rule against the modules it plans."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from kdcore.contract import (
    RegressorError,
    SpecError,
    describe_missing_layer,
    layer_paths,
    layer_shapes,
    parse_arch,
    plan_regressor,
)
from kdcore.inspection import inspect_model
from kdcore.models import build_model
from kdcore.regressor import build_regressor

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
        {
            "family": "cnn",
            "layers": [{"type": "flatten"}, {"type": "batchnorm"}, {"type": "linear"}],
        },
        {"family": "resnet", "depth": 8},
        {"family": "resnet", "depth": 14, "width": 2},
        {"family": "wrn", "depth": 10, "width": 1},
        {"family": "wrn", "depth": 16, "width": 2, "dropout": 0.3},
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


@pytest.mark.parametrize("input_shape", [(1, 6, 5), (2, 3, 3), (3, 17, 15), (7,)])
def test_shapes_match_the_built_models(input_shape: tuple[int, ...]) -> None:
    for raw in _specs():
        spec = parse_arch(raw)
        try:
            model = build_model(spec, input_shape, CLASSES)
        except SpecError:
            with pytest.raises(SpecError):
                layer_shapes(spec, input_shape, CLASSES)
            continue
        built = {
            layer.path: tuple(layer.shape) for layer in inspect_model(model, input_shape).layers
        }
        shapes = layer_shapes(spec, input_shape, CLASSES)
        assert shapes == built, (raw, input_shape)
        assert list(shapes) == [p for p, _ in model.named_modules() if p], (raw, input_shape)


def test_residual_families_need_images() -> None:
    spec = parse_arch({"family": "resnet", "depth": 8})
    with pytest.raises(SpecError, match="needs image input"):
        layer_shapes(spec, (12,), CLASSES)
    with pytest.raises(SpecError, match="needs image input"):
        build_model(spec, (12,), CLASSES)


def test_missing_layer_message_lists_near_paths() -> None:
    paths = layer_paths(parse_arch({"family": "resnet", "depth": 8}), (3, 8, 8), CLASSES)
    assert "layer2.0.relu1" in describe_missing_layer("layer2.0.relu", paths)


@pytest.mark.parametrize(
    ("guided", "hint"),
    [((4,), (9,)), ((2, 5, 5), (3, 3, 3)), ((2, 3, 3), (3, 5, 5)), ((2, 5, 3), (3, 3, 5)),
     ((2, 4, 4), (16,)), ((16,), (2, 4, 4)), ((2, 4, 4), (3, 4, 4))],
)  # fmt: skip
def test_the_regressor_plan_is_what_kdcore_builds(
    guided: tuple[int, ...], hint: tuple[int, ...]
) -> None:
    try:
        plan = plan_regressor(guided, hint)
    except RegressorError as planned:
        why = str(planned)
        with pytest.raises(RegressorError) as refused:
            build_regressor(guided, hint)
        assert str(refused.value) == why
        return
    module = build_regressor(guided, hint)
    assert sum(p.numel() for p in module.parameters()) == plan.params
