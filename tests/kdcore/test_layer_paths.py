import pytest

from kdcore.layer_paths import describe_missing_layer, layer_paths
from kdcore.models import build_model

SPECS = [
    {"family": "resnet", "depth": 8},
    {"family": "resnet", "depth": 20, "width": 4},
    {"family": "wrn", "depth": 16, "width": 2},
    {"family": "wrn", "depth": 10, "width": 1},
    {"family": "wrn", "depth": 16, "width": 1, "dropout": 0.3},
    {"family": "mlp", "hidden": [32, 16], "dropout": 0.2, "input_dropout": 0.1},
    {"family": "mlp", "hidden": [8]},
    {
        "family": "cnn",
        "layers": [
            {"type": "maxout_conv", "out": 4, "pad": 1, "name": "m"},
            {"type": "batchnorm"},
            {"type": "global_avgpool", "name": "gap"},
            {"type": "maxout_linear", "out": 6},
            {"type": "dropout"},
            {"type": "linear"},
        ],
    },
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: str(s["family"]) + str(s.get("depth", "")))
def test_paths_equal_the_built_models_modules(spec: dict) -> None:
    model = build_model(spec, (3, 16, 16), 10)
    assert layer_paths(spec) == [p for p, _ in model.named_modules() if p]


def test_missing_layer_message_lists_near_paths() -> None:
    msg = describe_missing_layer("layer2.0.relu", layer_paths({"family": "resnet", "depth": 8}))
    assert "layer2.0.relu1" in msg
