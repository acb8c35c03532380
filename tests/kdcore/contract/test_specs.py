from typing import Any, Literal

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from kdcore.contract import (
    ArchSpec,
    Family,
    Spec,
    SpecError,
    arch_json_schema,
    parse_arch,
    register_family,
    registered_families,
)
from kdcore.hooks import get_layer
from kdcore.models import build_model

EXAMPLES: dict[str, dict[str, Any]] = {
    "mlp-teacher": {"family": "mlp", "hidden": [1200, 1200], "dropout": 0.2},
    "mlp-student": {"family": "mlp", "hidden": [800, 800]},
    "resnet8x4": {"family": "resnet", "depth": 8, "width": 4},
    "resnet20": {"family": "resnet", "depth": 20},
    "wrn-16-2": {"family": "wrn", "depth": 16, "width": 2},
    "cnn": {
        "family": "cnn",
        "layers": [
            {"type": "conv", "out": 16, "k": 3, "pad": 1, "name": "c1"},
            {"type": "relu"},
            {"type": "maxpool", "k": 2},
            {"type": "flatten"},
            {"type": "linear", "out": 10},
        ],
    },
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_examples_build_and_give_logits(name: str) -> None:
    model = build_model(parse_arch(EXAMPLES[name]), (3, 32, 32), 10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("spec", "params"),
    [
        # Reference counts of the CIFAR nets (He et al. 2016; Zagoruyko & Komodakis 2016).
        ({"family": "resnet", "depth": 20}, 272_474),
        ({"family": "wrn", "depth": 40, "width": 2}, 2_243_546),
        ({"family": "wrn", "depth": 16, "width": 2}, 691_674),
    ],
)
def test_residual_nets_have_reference_parameter_counts(spec: dict, params: int) -> None:
    model = build_model(parse_arch(spec), (3, 32, 32), 10)
    assert sum(p.numel() for p in model.parameters()) == params


def test_cnn_paths_are_names_or_indices() -> None:
    model = build_model(parse_arch(EXAMPLES["cnn"]), (3, 32, 32), 10)
    assert [n for n, _ in model.named_children()] == ["c1", "1", "2", "3", "4"]


def test_mlp_paths_and_sizes() -> None:
    model = build_model(parse_arch(EXAMPLES["mlp-teacher"]), (1, 28, 28), 10)
    names = [n for n, _ in model.named_children()]
    assert names == ["flatten", "fc1", "relu1", "drop1", "fc2", "relu2", "drop2", "head"]
    assert get_layer(model, "fc1").in_features == 784


def test_maxout_layers() -> None:
    spec = {
        "family": "cnn",
        "layers": [
            {"type": "maxout_conv", "out": 8, "k": 3, "pieces": 3, "name": "mc"},
            {"type": "flatten"},
            {"type": "maxout_linear", "out": 12},
            {"type": "linear"},
        ],
    }
    model = build_model(parse_arch(spec), (1, 6, 6), 4)
    assert get_layer(model, "mc.conv").out_channels == 24
    assert model(torch.zeros(2, 1, 6, 6)).shape == (2, 4)


def test_unknown_family_lists_valid_ones() -> None:
    with pytest.raises(SpecError, match="valid families: cnn, mlp, resnet, wrn"):
        parse_arch({"family": "vit"})


@pytest.mark.parametrize("family", [{}, ["cnn"], None, 3])
def test_a_family_that_is_not_a_name_is_refused(family: object) -> None:
    with pytest.raises(SpecError, match="valid families"):
        parse_arch({"family": family})
    with pytest.raises(ValidationError, match="valid families"):
        TypeAdapter(ArchSpec).validate_python({"family": family})


def test_unknown_layer_type_lists_valid_ones() -> None:
    with pytest.raises(SpecError, match="'conv'.*'linear'"):
        parse_arch({"family": "cnn", "layers": [{"type": "lstm"}]})


def test_bad_depth_says_which_are_valid() -> None:
    with pytest.raises(SpecError, match="6n\\+2"):
        parse_arch({"family": "resnet", "depth": 10})


def test_unknown_field_is_refused() -> None:
    with pytest.raises(SpecError, match="hidden_sizes"):
        parse_arch({"family": "mlp", "hidden": [8], "hidden_sizes": [3]})


def test_impossible_shape_names_the_layer() -> None:
    spec = {
        "family": "cnn",
        "layers": [{"type": "conv", "out": 4, "k": 9}, {"type": "flatten"}, {"type": "linear"}],
    }
    with pytest.raises(SpecError, match="layer 0.*cannot take input shape \\(3, 5, 5\\)"):
        build_model(parse_arch(spec), (3, 5, 5), 10)


def test_linear_on_an_image_asks_for_flatten() -> None:
    spec = {"family": "cnn", "layers": [{"type": "linear"}]}
    with pytest.raises(SpecError, match="flatten"):
        build_model(parse_arch(spec), (3, 8, 8), 10)


def test_wrong_class_count_at_the_end() -> None:
    spec = {"family": "cnn", "layers": [{"type": "flatten"}, {"type": "linear", "out": 5}]}
    with pytest.raises(SpecError, match="10 classes"):
        build_model(parse_arch(spec), (3, 8, 8), 10)


def test_image_families_refuse_vectors() -> None:
    with pytest.raises(SpecError, match="mlp"):
        build_model(parse_arch({"family": "resnet", "depth": 8}), (784,), 10)


def test_duplicate_layer_names() -> None:
    layers = [{"type": "relu", "name": "a"}, {"type": "relu", "name": "a"}]
    with pytest.raises(SpecError, match="twice"):
        parse_arch({"family": "cnn", "layers": layers})


def test_json_schema_lists_every_family() -> None:
    schema = arch_json_schema()
    text = str(schema)
    for family in ("cnn", "resnet", "wrn", "mlp", "maxout_conv"):
        assert family in text


def test_a_spec_class_must_accept_its_family_name() -> None:
    class Other(Spec):
        family: Literal["other"]

    with pytest.raises(ValueError, match="Literal\\['toy'\\]"):
        register_family(Family("toy", spec=Other, shapes=lambda *_: {}, build="nowhere:build"))
    assert "toy" not in registered_families()
