import pathlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kdcore.contract import Spec, parse_arch
from kdcore.hooks import FeatureTap, LayerNotFound
from kdcore.models import build_model
from kdcore.weights import (
    CodeCheckpointRefused,
    WeightsError,
    detect_format,
    freeze,
    is_frozen,
    load_model,
    load_state_dict,
    load_weights_into,
)
from tests.kdcore.factories import cnn

# torch.export.load itself warns about a deprecated pytree API (torch's own code, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

SHAPE = (3, 8, 8)
CLASSES = 5
MLP = parse_arch({"family": "mlp", "hidden": [16, 8]})


def make_cnn(width: int = 4, seed: int = 0) -> nn.Module:
    """A tiny CNN in eval mode whose BatchNorm statistics are not the defaults."""
    torch.manual_seed(seed)
    model = build_model(cnn(width=width), SHAPE, CLASSES)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.uniform_(-0.5, 0.5)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    return model.eval()


def batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(1))


def export_pt2(model: nn.Module, path: Path) -> None:
    batch_dim = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (batch(2),), dynamic_shapes=({0: batch_dim},))
    with path.open("wb") as f:  # uploads have any name; torch warns on paths not ending .pt2
        torch.export.save(program, f)


def save_torchscript(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(model, batch(2)), str(path))


class Touch:
    """Unpickling this creates ``marker``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.marker,))


# --- formats and state dicts --------------------------------------------------------------


def test_detect_format_by_content_not_extension(tmp_path: Path) -> None:
    model = make_cnn()
    save_file(model.state_dict(), str(tmp_path / "a.bin"))
    torch.save(model.state_dict(), tmp_path / "b.bin")
    torch.save(model.state_dict(), tmp_path / "c.bin", _use_new_zipfile_serialization=False)
    save_torchscript(model, tmp_path / "d.bin")
    export_pt2(model, tmp_path / "e.pt2")
    (tmp_path / "f.pt").write_bytes(b"just some text, not weights")

    assert detect_format(tmp_path / "a.bin") == "safetensors"
    assert detect_format(tmp_path / "b.bin") == "state_dict"
    assert detect_format(tmp_path / "c.bin") == "state_dict"
    assert detect_format(tmp_path / "d.bin") == "torchscript"
    assert detect_format(tmp_path / "e.pt2") == "export"
    with pytest.raises(WeightsError, match="accepted formats: safetensors"):
        detect_format(tmp_path / "f.pt")
    with pytest.raises(WeightsError, match="cannot read"):
        detect_format(tmp_path / "missing.pt")


@pytest.mark.parametrize("fmt", ["safetensors", "zip", "legacy"])
def test_state_dict_round_trip(tmp_path: Path, fmt: str) -> None:
    original = make_cnn(seed=1)
    path = tmp_path / "w"
    if fmt == "safetensors":
        save_file(original.state_dict(), str(path))
    else:
        torch.save(original.state_dict(), path, _use_new_zipfile_serialization=fmt == "zip")

    state = load_state_dict(path)
    assert state.keys() == original.state_dict().keys()
    model = freeze(load_model(path, cnn(width=4), SHAPE, CLASSES))
    x = batch()
    assert torch.equal(model(x), original(x))


@pytest.mark.parametrize("key", ["state_dict", "model", "student"])
def test_wrapped_state_dicts_are_unwrapped(tmp_path: Path, key: str) -> None:
    original = make_cnn()
    torch.save({key: original.state_dict(), "epoch": 3, "best": 0.5}, tmp_path / "ckpt.pt")
    state = load_state_dict(tmp_path / "ckpt.pt")
    assert state.keys() == original.state_dict().keys()


def test_data_parallel_prefix_is_stripped(tmp_path: Path) -> None:
    original = make_cnn()
    torch.save(nn.DataParallel(original).state_dict(), tmp_path / "dp.pt")
    assert load_state_dict(tmp_path / "dp.pt").keys() == original.state_dict().keys()


def test_dict_without_tensors_names_its_keys(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "x.pt")
    with pytest.raises(WeightsError, match="keys 'epoch', 'optimizer'"):
        load_state_dict(tmp_path / "x.pt")


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path) -> None:
    save_file(make_cnn(width=4).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError) as err:
        load_model(tmp_path / "w.safetensors", cnn(width=8), SHAPE, CLASSES)
    msg = str(err.value)
    assert (
        "13 with a different shape: conv1.weight: file (4,3,3,3) vs architecture (8,3,3,3)" in msg
    )
    assert "bn1.running_mean: file (4,) vs architecture (8,)" in msg
    assert "and 3 more" in msg  # fc.weight, file (5,64) vs (5,128), is past the first ten


def test_wrong_class_count_shows_the_head_shapes(tmp_path: Path) -> None:
    save_file(make_cnn().state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError) as err:
        load_model(tmp_path / "w.safetensors", cnn(width=4), SHAPE, 10)
    msg = str(err.value)
    assert "2 with a different shape" in msg
    assert "fc.weight: file (5,64) vs architecture (10,64)" in msg
    assert "fc.bias: file (5,) vs architecture (10,)" in msg


def test_missing_and_unexpected_keys_are_listed() -> None:
    model = build_model(MLP, (6,), CLASSES)
    state = dict(model.state_dict())
    del state["head.bias"]
    state["fc3.weight"] = torch.zeros(2, 2)
    with pytest.raises(WeightsError) as err:
        load_weights_into(model, state)
    msg = str(err.value)
    assert "1 missing from the file: head.bias (5,)" in msg
    assert "1 in the file but not in the architecture: fc3.weight (2,2)" in msg


def test_long_lists_are_cut_short() -> None:
    model = build_model(parse_arch({"family": "mlp", "hidden": [4] * 12}), (6,), CLASSES)
    with pytest.raises(WeightsError, match=r"26 missing from the file: .*, and 16 more"):
        load_weights_into(model, {})


def test_weights_only_file_needs_a_spec(tmp_path: Path) -> None:
    save_file(make_cnn().state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match="send the architecture spec"):
        load_model(tmp_path / "w.safetensors", None, SHAPE, CLASSES)


# --- refusing code --------------------------------------------------------------------------


def test_pickled_whole_model_is_refused_with_what_to_send(tmp_path: Path) -> None:
    torch.save(make_cnn(), tmp_path / "teacher.pt")
    with pytest.raises(WeightsError) as err:
        load_state_dict(tmp_path / "teacher.pt")
    msg = str(err.value)
    assert "pickled model object" in msg
    assert "torch.nn.modules.container.Sequential" in msg
    assert 'torch.save(model.state_dict(), "teacher.pt")' in msg
    assert "architecture spec" in msg


def test_malicious_pickle_in_torch_zip_never_runs(tmp_path: Path) -> None:
    control = tmp_path / "control"
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(1), "x": Touch(control)}, tmp_path / "control.pt")
    torch.save({"weight": torch.zeros(1), "x": Touch(marker)}, tmp_path / "evil.pt")
    # Positive control, on our own harmless file: an unrestricted load does run the payload.
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()

    with pytest.raises(WeightsError, match="refused evil.pt: it holds pickled Python objects"):
        load_state_dict(tmp_path / "evil.pt")
    with pytest.raises(WeightsError):
        load_model(tmp_path / "evil.pt", MLP, (6,), CLASSES, allow_code=True)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4:UserWarning")
def test_malicious_raw_pickle_never_runs(tmp_path: Path) -> None:
    control = tmp_path / "control"
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Touch(control), protocol=2))  # the payload is live
    assert control.exists()

    for protocol in (2, 4):
        path = tmp_path / f"evil{protocol}.pt"
        path.write_bytes(pickle.dumps(Touch(marker), protocol=protocol))
        assert detect_format(path) == "state_dict"
        with pytest.raises(WeightsError, match="refused"):
            load_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_truncated_files_raise_weights_error(tmp_path: Path, fmt: str) -> None:
    state = make_cnn().state_dict()
    path = tmp_path / "w"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path, _use_new_zipfile_serialization=fmt == "zip")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="w.*(truncated|corrupt)"):
        load_model(path, cnn(width=4), SHAPE, CLASSES)


# --- code checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_code_checkpoints_refused_unless_allowed(tmp_path: Path, fmt: str) -> None:
    original = make_cnn()
    path = tmp_path / "teacher.bin"
    (save_torchscript if fmt == "torchscript" else export_pt2)(original, path)

    with pytest.raises(CodeCheckpointRefused, match="KDSERVE_ALLOW_CODE_CHECKPOINTS"):
        load_model(path, None, SHAPE, CLASSES)
    with pytest.raises(CodeCheckpointRefused):
        load_state_dict(path)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = freeze(load_model(path, None, SHAPE, CLASSES, allow_code=True))
    x = batch(3)
    torch.testing.assert_close(model(x), original(x), rtol=1e-6, atol=1e-6)


def test_code_checkpoint_with_wrong_class_count_is_reported(tmp_path: Path) -> None:
    export_pt2(make_cnn(), tmp_path / "t.pt2")
    with pytest.raises(WeightsError, match="returns \\(2, 5\\).*7 classes"):
        load_model(tmp_path / "t.pt2", None, SHAPE, 7, allow_code=True)


@pytest.mark.parametrize(
    ("spec", "hint"),
    [(cnn(width=4), "relu2"), (parse_arch({"family": "resnet", "depth": 8}), "layer2.0.relu2")],
    ids=["cnn", "resnet"],
)
def test_feature_tap_reaches_hint_layer_of_unflattened_pt2(
    tmp_path: Path, spec: Spec, hint: str
) -> None:
    original = build_model(spec, SHAPE, CLASSES).eval()
    export_pt2(original, tmp_path / "t.pt2")
    teacher = freeze(load_model(tmp_path / "t.pt2", None, SHAPE, CLASSES, allow_code=True))
    x = batch()
    with FeatureTap(original, hint) as tap:
        _, want = tap.run(x)
    # A parameter-free layer: only the unflattened module tree keeps it as a module, and
    # its forward hook fires (here ending the forward pass early).
    with FeatureTap(teacher, hint, stop=True) as tap:
        logits, got = tap.run(x)
    assert logits is None
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_flat_pt2_fallback_warns_and_hint_layers_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_pt2(make_cnn(), tmp_path / "t.pt2")

    def broken(*_a: Any, **_k: Any) -> nn.Module:
        raise RuntimeError("cannot unflatten")

    monkeypatch.setattr(torch.export, "unflatten", broken)
    with pytest.warns(UserWarning, match="cannot be hooked"):
        teacher = freeze(load_model(tmp_path / "t.pt2", None, SHAPE, CLASSES, allow_code=True))
    assert is_frozen(teacher)  # the flat graph refuses eval(): freeze sets the flags
    with pytest.raises(LayerNotFound):
        FeatureTap(teacher, "relu2")


def test_feature_tap_on_torchscript_fails_clearly(tmp_path: Path) -> None:
    save_torchscript(make_cnn(), tmp_path / "t.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        teacher = load_model(tmp_path / "t.pt", None, SHAPE, CLASSES, allow_code=True)
    with pytest.raises(LayerNotFound, match="use method kd"):
        FeatureTap(teacher, "relu2")


def test_freeze_sets_eval_and_stops_gradients() -> None:
    model = build_model(cnn(width=4), SHAPE, CLASSES).train()
    assert not is_frozen(model)
    assert freeze(model) is model
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    assert is_frozen(model)


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_freeze_works_on_code_checkpoints(tmp_path: Path, fmt: str) -> None:
    """ScriptModules refuse requires_grad_(); freeze must not call it (KD would crash)."""
    path = tmp_path / "teacher.bin"
    (save_torchscript if fmt == "torchscript" else export_pt2)(make_cnn(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = load_model(path, None, SHAPE, CLASSES, allow_code=True)
    model.train()
    assert not is_frozen(model)
    assert freeze(model) is model
    assert is_frozen(model)
