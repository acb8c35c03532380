"""The torch-free cost model against the models kdcore builds: the same parameter count as
``model.parameters()``, the same MACs as torch's FLOP counter, and activations that add up
the inspected layers' outputs; the bounded JSON reader; the bounded near-name search."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest

from kdcore.contract import (
    ModelCost,
    ResNetSpec,
    SpecError,
    describe_missing_layer,
    layer_paths,
    layer_shapes,
    load_json,
    model_cost,
    parse_arch,
    parse_config,
)
from kdcore.contract import registry as contract_registry
from kdcore.inspection import inspect_model
from kdcore.models import build_model
from tests.kdcore.contract.test_families import CLASSES, _specs

MORE: list[dict[str, Any]] = [
    {"family": "resnet", "depth": 20},
    {"family": "wrn", "depth": 16, "width": 1},
    {"family": "mlp", "hidden": [7]},
    {
        "family": "cnn",
        "layers": [
            {"type": "conv", "out": 3, "k": 1, "bias": False},
            {"type": "batchnorm"},
            {"type": "flatten"},
            {"type": "linear", "out": 5, "bias": False},
            {"type": "batchnorm"},
            {"type": "linear"},
        ],
    },
]


@pytest.mark.parametrize("input_shape", [(1, 6, 5), (3, 17, 15), (7,)])
def test_cost_matches_the_built_models(input_shape: tuple[int, ...]) -> None:
    checked = 0
    for raw in [*_specs(), *MORE]:
        spec = parse_arch(raw)
        try:
            model = build_model(spec, input_shape, CLASSES)
        except SpecError:
            continue
        summary = inspect_model(model, input_shape)
        cost = model_cost(spec, input_shape, CLASSES)
        assert (cost.params, cost.macs) == (summary.params, summary.macs), (raw, input_shape)
        assert cost.activations == sum(math.prod(layer.shape) for layer in summary.layers)
        assert cost.model_bytes == 4 * summary.params
        checked += 1
    assert checked >= 4  # vectors fit few of these specs


def test_reference_costs() -> None:
    """WRN-16-2 and ResNet-32 on CIFAR-10: the counts usually quoted for them."""
    wrn = model_cost(parse_arch({"family": "wrn", "depth": 16, "width": 2}), (3, 32, 32), 10)
    resnet = model_cost(parse_arch({"family": "resnet", "depth": 32}), (3, 32, 32), 10)
    assert (wrn.params, resnet.params) == (691_674, 466_906)
    assert (wrn.macs, resnet.macs) == (101_106_944, 69_124_736)  # 0.10 and 0.07 GMACs
    assert resnet.activation_bytes(128) == 1_249_418 * 128 * 4


def test_a_family_without_a_cost_function_has_activations_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(contract_registry, "_FAMILIES", dict(contract_registry._FAMILIES))
    mlp = contract_registry.get_family("mlp")
    contract_registry.register_family(
        contract_registry.Family("mlp", spec=mlp.spec, shapes=mlp.shapes, build=mlp.build)
    )
    cost = model_cost(parse_arch({"family": "mlp", "hidden": [4]}), (2,), 3)
    assert cost == ModelCost(params=None, macs=None, activations=2 + 4 + 4 + 3)
    assert cost.model_bytes is None


def test_the_deepest_resnet_costs_little_to_work_out() -> None:
    spec = parse_arch({"family": "resnet", "depth": 1202, "width": 64})
    started = time.perf_counter()
    cost = model_cost(spec, (3, 32, 32), 10)
    assert time.perf_counter() - started < 1
    assert cost.params is not None
    assert cost.params > 10**10  # what a service's limit then refuses


def test_classes_and_sample_size_have_bounds() -> None:
    spec = parse_arch({"family": "mlp", "hidden": [4]})
    with pytest.raises(SpecError, match="1,000,001 classes is more than the 1,000,000"):
        layer_shapes(spec, (4,), 1_000_001)
    with pytest.raises(SpecError, match="more than the 67,108,864 values per sample"):
        layer_shapes(spec, (4, 4096, 4097), 10)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 33 + "]" * 33, "nested deeper than 32 levels"),
        ('{"a": ' * 40 + "1" + "}" * 40, "nested deeper than 32 levels"),
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 32 levels"),
        ('{"lr": NaN}', "NaN is not a JSON number"),
        ('{"lr": Infinity}', "Infinity is not a JSON number"),
        (b"[-Infinity]", "-Infinity is not a JSON number"),
        ("{", "Expecting property name"),
    ],
)
def test_load_json_refuses_what_json_does_not_allow(text: str | bytes, message: str) -> None:
    with pytest.raises(json.JSONDecodeError, match=message):
        load_json(text)


def test_load_json_reads_json() -> None:
    deep: Any = "[" * 32 + "]" * 32
    assert load_json(deep) == json.loads(deep)
    brackets_in_strings = json.dumps({"a": "[" * 100, "b": ['\\"[{', "]]"], "c": {"d": []}})
    assert load_json(brackets_in_strings) == json.loads(brackets_in_strings)
    assert load_json('{"a": [1, 2.5, null, true, "x"]}'.encode("utf-16")) == {
        "a": [1, 2.5, None, True, "x"]
    }


def test_specs_and_configs_from_text_are_bounded() -> None:
    with pytest.raises(SpecError, match="Infinity is not a JSON number"):
        parse_config('{"method": "kd", "weight_decay": Infinity}')
    with pytest.raises(SpecError, match="finite number"):
        parse_config('{"method": "kd", "lr": 1e999}')  # Python reads it as inf
    with pytest.raises(SpecError, match="nested deeper"):
        parse_arch('{"family": "mlp", "hidden": ' + "[" * 2000 + "]" * 2000 + "}")


def test_the_near_name_search_is_bounded_and_still_finds_neighbours() -> None:
    # 80,005 paths, as many as a big uploaded teacher may list (past the spec's depth bound)
    deep = ResNetSpec.model_construct(family="resnet", depth=20_002, width=1)
    many = layer_paths(deep, (3, 32, 32), 10)
    assert len(many) > 100 * contract_registry.NEAR_CANDIDATES
    for probe, near in [
        ("layer3.150.conv", "layer3.150.conv1"),  # under a module that exists
        ("layer3.0.cnv1", "layer3.0.conv1"),
        ("layer9.0.conv", "layer1.0.conv1"),  # no such module: one path per pattern
    ]:
        started = time.perf_counter()
        message = describe_missing_layer(probe, many)
        assert time.perf_counter() - started < 2
        assert near in message.split("nearest valid paths: ")[1].split(", "), message
