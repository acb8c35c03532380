import pytest
import torch

from kdcore.contract import parse_arch
from kdcore.hooks import FeatureTap, LayerNotFound, get_layer
from kdcore.inspection import inspect_model
from kdcore.models import build_model

CNN = {
    "family": "cnn",
    "layers": [
        {"type": "conv", "out": 8, "k": 3, "pad": 1, "name": "c1"},
        {"type": "relu", "name": "r1"},
        {"type": "maxpool", "k": 2},
        {"type": "flatten"},
        {"type": "linear", "name": "fc"},
    ],
}


def test_inspect_reports_shapes_params_and_macs_per_layer() -> None:
    model = build_model(parse_arch(CNN), (3, 8, 8), 10)
    summary = inspect_model(model, (3, 8, 8))
    layers = {layer.path: layer for layer in summary.layers}
    assert layers["c1"].shape == [8, 8, 8]
    assert layers["c1"].params == 3 * 8 * 9 + 8
    # conv MACs: output positions × k·k·C_in per output channel
    assert layers["c1"].macs == 8 * 8 * 8 * (3 * 9)
    assert layers["2"].shape == [8, 4, 4]
    assert layers["fc"].macs == 128 * 10
    assert summary.params == sum(p.numel() for p in model.parameters())
    assert summary.macs == layers["c1"].macs + layers["fc"].macs
    assert model.training  # inspection restores the mode


def test_resnet_paths_are_dotted() -> None:
    model = build_model(parse_arch({"family": "resnet", "depth": 8}), (3, 32, 32), 10)
    paths = [layer.path for layer in inspect_model(model, (3, 32, 32)).layers]
    assert "layer2.0.conv1" in paths
    assert "layer3.0.shortcut.0" in paths


def test_missing_layer_suggests_nearest_paths() -> None:
    model = build_model(parse_arch({"family": "resnet", "depth": 8}), (3, 32, 32), 10)
    with pytest.raises(LayerNotFound, match=r"nearest valid paths: .*layer2\.0\.relu1"):
        get_layer(model, "layer2.0.relu")


def test_tap_with_stop_ends_the_forward_pass_early() -> None:
    model = build_model(parse_arch(CNN), (3, 8, 8), 10)
    ran: list[str] = []
    get_layer(model, "fc").register_forward_hook(lambda *_: ran.append("fc"))
    with FeatureTap(model, "r1", stop=True) as tap:
        logits, feature = tap.run(torch.zeros(2, 3, 8, 8))
    assert logits is None
    assert feature.shape == (2, 8, 8, 8)
    assert ran == []
    with FeatureTap(model, "r1") as tap:
        logits, _ = tap.run(torch.zeros(2, 3, 8, 8))
    assert logits is not None
    assert logits.shape == (2, 10)


def test_torchscript_models_get_totals_but_no_layers() -> None:
    model = build_model(parse_arch(CNN), (3, 8, 8), 10).eval()
    eager = inspect_model(model, (3, 8, 8))
    scripted = inspect_model(torch.jit.trace(model, torch.zeros(1, 3, 8, 8)), (3, 8, 8))
    assert scripted.layers == []
    assert scripted.params == eager.params
    assert scripted.macs == eager.macs
