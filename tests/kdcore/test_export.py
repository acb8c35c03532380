import copy
import json
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdcore import export
from kdcore.contract import Spec, SpecError, parse_arch
from kdcore.export import FORMATS, Preprocessed, StudentMeta, export_student, load_student
from kdcore.models import build_model
from kdcore.weights import WeightsError
from tests.kdcore.factories import cnn

# torch.export.load itself warns about a deprecated pytree API (torch's own code, not ours).
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

CLASSES = ["cat", "dog", "eel"]
IMAGE = (3, 8, 8)
VECTOR = (6,)
MLP = parse_arch({"family": "mlp", "hidden": [16, 8], "dropout": 0.2})


def make_student(spec: Spec, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    """A small student in train mode whose BatchNorm statistics are not the defaults."""
    torch.manual_seed(seed)
    model = build_model(spec, shape, len(CLASSES))
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.uniform_(-0.5, 0.5)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    return model


def image_meta() -> StudentMeta:
    return StudentMeta(
        spec=cnn(width=4),
        input_shape=list(IMAGE),
        num_classes=len(CLASSES),
        classes=CLASSES,
        preprocess={"scale": 1 / 255, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
    )


def vector_meta() -> StudentMeta:
    return StudentMeta(
        spec=MLP,
        input_shape=list(VECTOR),
        num_classes=len(CLASSES),
        classes=CLASSES,
        preprocess={"scale": 1.0, "mean": [2.0], "std": [3.0]},
    )


STUDENTS: list[tuple[Spec, tuple[int, ...], Callable[[], StudentMeta]]] = [
    (cnn(width=4), IMAGE, image_meta),
    (MLP, VECTOR, vector_meta),
]


def raw_batch(shape: tuple[int, ...], n: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (n, *shape), generator=g).float()  # raw 0..255 values


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both students exported in every format once; the exports are the slow part."""
    out: dict[str, Any] = {}
    for spec, shape, meta_fn in STUDENTS:
        name = spec.family
        model = make_student(spec, shape)
        meta = meta_fn()
        folder = tmp_path_factory.mktemp(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
            files = export_student(model, meta, folder)
        out[name] = {"model": model, "meta": meta, "dir": folder, "files": files, "shape": shape}
    return out


@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_every_format_is_written_with_no_temporary_files(
    exported: dict[str, Any], family: str
) -> None:
    case = exported[family]
    assert set(case["files"]) == {*FORMATS, "meta"}
    assert sorted(p.name for p in case["dir"].iterdir()) == [
        "student.json",
        "student.onnx",
        "student.pt2",
        "student.safetensors",
        "student.torchscript.pt",
    ]


@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_export_leaves_the_callers_model_alone(exported: dict[str, Any], family: str) -> None:
    model = exported[family]["model"]
    assert model.training
    assert all(p.requires_grad for p in model.parameters())


def reference(case: dict[str, Any]) -> Preprocessed:
    """The original student in eval mode, with preprocessing; the fixture's model is untouched."""
    return Preprocessed.from_meta(copy.deepcopy(case["model"]).eval(), case["meta"])


@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_load_student_gives_the_same_logits(exported: dict[str, Any], family: str) -> None:
    case = exported[family]
    student, meta = load_student(case["dir"])
    assert meta == case["meta"]
    assert not student.training
    original = reference(case)
    x = original.normalize(raw_batch(case["shape"]))
    with torch.no_grad():
        assert torch.equal(student(x), original.model(x))


@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_programs_take_raw_input(exported: dict[str, Any], family: str) -> None:
    case = exported[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        scripted = torch.jit.load(str(case["dir"] / "student.torchscript.pt"))
    program = torch.export.load(case["dir"] / "student.pt2").module()
    x = raw_batch(case["shape"], n=5)  # not the batch size used to export
    with torch.no_grad():
        want = reference(case)(x)
        torch.testing.assert_close(scripted(x), want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(program(x), want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(program(x[:1]), want[:1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_onnx_matches_torch(exported: dict[str, Any], family: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    case = exported[family]
    session = ort.InferenceSession(
        str(case["dir"] / "student.onnx"), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in session.get_inputs()] == ["input"]
    x = raw_batch(case["shape"], n=7)
    (got,) = session.run(["logits"], {"input": x.numpy()})
    with torch.no_grad():
        want = reference(case)(x)
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


def test_student_json_content(exported: dict[str, Any]) -> None:
    doc = json.loads((exported["cnn"]["dir"] / "student.json").read_text())
    assert doc["format_version"] == 1
    # The spec is stored canonical: defaults filled in, unset optional fields left out.
    assert parse_arch(doc["spec"]) == parse_arch(cnn(width=4))
    assert doc["spec"]["layers"][0] == {
        "name": "conv1",
        "type": "conv",
        "out": 4,
        "k": 3,
        "stride": 1,
        "pad": 1,
        "bias": True,
    }
    assert "stride" not in doc["spec"]["layers"][6]  # maxpool: stride defaults to k
    assert doc["input_shape"] == [3, 8, 8]
    assert doc["num_classes"] == 3
    assert doc["classes"] == CLASSES
    assert doc["preprocess"] == {
        "scale": 1 / 255,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
    }
    assert doc["files"] == {
        "safetensors": "student.safetensors",
        "torchscript": "student.torchscript.pt",
        "pt2": "student.pt2",
        "onnx": "student.onnx",
    }
    assert "load_student" in doc["how_to_load"]


def test_meta_reads_a_full_model_dump() -> None:
    spec = cnn(width=4).model_dump(mode="json")  # with None fields
    assert StudentMeta.from_json_dict({**image_meta().to_json_dict(), "spec": spec}) == (
        image_meta()
    )


def test_preprocessed_normalizes_per_channel() -> None:
    meta = image_meta()
    wrapped = Preprocessed.from_meta(nn.Identity(), meta)
    x = torch.full((1, *IMAGE), 255.0)
    expected = (1.0 - torch.tensor([0.5, 0.4, 0.3])) / torch.tensor([0.2, 0.25, 0.3])
    torch.testing.assert_close(wrapped(x)[0, :, 0, 0], expected)
    assert wrapped.mean.shape == (3, 1, 1)
    assert {n for n, _ in wrapped.named_buffers()} == {"mean", "std"}


@pytest.mark.parametrize("meta_fn", [image_meta, vector_meta])
def test_preprocessed_normalizes_exactly_like_training(meta_fn: Callable[[], StudentMeta]) -> None:
    # Training and evaluation call the Normalizer on the raw (here uint8) batch.
    meta = meta_fn()
    x = raw_batch(tuple(meta.input_shape)).to(torch.uint8)
    wrapped = Preprocessed.from_meta(nn.Identity(), meta)
    assert torch.equal(wrapped(x.float()), meta.normalizer(x))


def test_only_the_requested_formats(tmp_path: Path) -> None:
    files = export_student(
        make_student(MLP, VECTOR), vector_meta(), tmp_path, formats=["safetensors"]
    )
    assert set(files) == {"safetensors", "meta"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.json", "student.safetensors"]
    with pytest.raises(ValueError, match="valid: safetensors, torchscript, pt2, onnx"):
        export_student(make_student(MLP, VECTOR), vector_meta(), tmp_path, formats=["tflite"])


def test_onnx_without_the_extra_is_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kdcore.export._onnx_available", lambda: False)
    with pytest.warns(UserWarning, match=r"pip install 'kdserve\[onnx\]'"):
        files = export_student(
            make_student(MLP, VECTOR), vector_meta(), tmp_path, formats=["safetensors", "onnx"]
        )
    assert "onnx" not in files
    assert not (tmp_path / "student.onnx").exists()


def test_failed_check_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_load = torch.export.load

    class Drifting:
        """The written program, reloaded, but its logits are off by 0.01."""

        def __init__(self, path: Path) -> None:
            self.program = real_load(path)

        def module(self) -> Any:
            module = self.program.module()
            return lambda x: module(x) + 0.01

    (tmp_path / "student.pt2").write_bytes(b"an older export's program")
    monkeypatch.setattr(torch.export, "load", Drifting)
    notes: list[str] = []
    files = export_student(
        make_student(MLP, VECTOR),
        vector_meta(),
        tmp_path,
        formats=["safetensors", "pt2"],
        warn=notes.append,
    )
    # An optional program that fails its check is left out, with the reason; the rest goes on.
    assert set(files) == {"safetensors", "meta"}
    assert len(notes) == 1
    assert notes[0].startswith("the pt2 export was left out, it failed: RuntimeError: the ")
    assert "torch.export export does not reproduce the PyTorch model" in notes[0]
    assert "difference 0.01" in notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.json", "student.safetensors"]
    assert json.loads((tmp_path / "student.json").read_text())["files"] == {
        "safetensors": "student.safetensors"
    }


def test_a_failing_optional_format_warns_and_the_weights_stay_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: Any) -> None:
        raise RuntimeError("x" * 5000)

    monkeypatch.setitem(export._WRITERS, "onnx", fail)
    with pytest.warns(UserWarning, match="the onnx export was left out") as caught:
        files = export_student(
            make_student(MLP, VECTOR), vector_meta(), tmp_path, formats=["safetensors", "onnx"]
        )
    assert "onnx" not in files
    assert len(str(caught[0].message)) < 700  # a long reason is cut
    monkeypatch.setitem(export._WRITERS, "safetensors", fail)
    with pytest.raises(RuntimeError, match="xxx"):
        export_student(make_student(MLP, VECTOR), vector_meta(), tmp_path, formats=["safetensors"])


def test_model_that_does_not_fit_the_spec_is_refused(tmp_path: Path) -> None:
    other = make_student(parse_arch({"family": "mlp", "hidden": [4]}), VECTOR)
    with pytest.raises(WeightsError, match="fc1.weight: file \\(4,6\\) vs architecture \\(16,6\\)"):
        export_student(other, vector_meta(), tmp_path, formats=["safetensors"])


def test_meta_is_validated() -> None:
    meta = vector_meta()
    with pytest.raises(ValueError, match="one name per logit"):
        replace(meta, classes=["a"])
    with pytest.raises(ValueError, match="1 value or 6"):
        replace(meta, preprocess={"mean": [0.0, 1.0]})
    with pytest.raises(ValueError, match="non-zero"):
        replace(meta, preprocess={"std": [0.0]})
    with pytest.raises(SpecError):
        StudentMeta.from_json_dict({**meta.to_json_dict(), "spec": {"family": "transformer"}})
    assert replace(meta, preprocess={}).preprocess == {"scale": 1.0, "mean": [0.0], "std": [1.0]}


def test_load_student_explains_missing_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no student.json"):
        load_student(tmp_path)
    export_student(make_student(MLP, VECTOR), vector_meta(), tmp_path, formats=["safetensors"])
    (tmp_path / "student.safetensors").unlink()
    with pytest.raises(WeightsError, match="'safetensors' format"):
        load_student(tmp_path)
