import json
from pathlib import Path

import pytest
import torch

from kdcore import export
from kdcore.contract import DistillConfig
from kdcore.data import Normalizer
from kdcore.evaluate import predict, score
from kdcore.export import load_student
from kdcore.pipeline import REPORT_NAME, TeacherFile, run
from tests.kdcore.factories import cnn, config, image_data


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    run(
        spec=cnn(16),
        config=DistillConfig(**config(epochs=3)),
        data=image_data(),
        out_dir=out,
        formats=("safetensors",),
    )
    return out


def test_fitnet_job_exports_student_and_a_side_by_side_report(
    tmp_path: Path, teacher_dir: Path
) -> None:
    data, val = image_data(seed=0), image_data(n=64, seed=1)
    cfg = DistillConfig(
        **config(
            method="fitnet",
            epochs=2,
            hint={"teacher_layer": "relu1", "student_layer": "relu2", "epochs": 1},
        )
    )
    report = run(
        spec=cnn(4),
        config=cfg,
        data=data,
        val=val,
        out_dir=tmp_path,
        teacher=TeacherFile(teacher_dir / "student.safetensors", cnn(16)),
        formats=("safetensors", "torchscript"),
    )

    saved = json.loads((tmp_path / REPORT_NAME).read_text())
    for who in ("teacher", "student"):
        assert {"accuracy", "params", "macs", "latency_ms"} <= saved[who].keys()
    assert saved["compression"] == pytest.approx(
        saved["teacher"]["params"] / saved["student"]["params"]
    )
    assert saved["speedup"] == pytest.approx(
        saved["teacher"]["latency_ms"] / saved["student"]["latency_ms"]
    )
    assert set(saved["stage_seconds"]) == {"hint", "kd"}
    assert saved["data"]["eval_samples"] == 64
    assert saved["config"]["hint"]["teacher_layer"] == "relu1"
    assert {
        "student.safetensors",
        "student.json",
        "student.torchscript.pt",
        "metrics.jsonl",
        "checkpoint.pt",
        "report.json",
    } <= {p.name for p in tmp_path.iterdir()}

    # The exported student scores exactly what the report says.
    student, meta = load_student(tmp_path)
    again = score(predict(student, val, Normalizer.from_dict(meta.preprocess)), val.y)
    assert again.accuracy == report.student.accuracy
    assert 0 <= report.student.agreement <= 1  # type: ignore[operator]


def test_scratch_job_has_no_teacher_columns(tmp_path: Path) -> None:
    report = run(
        spec=cnn(4),
        config=DistillConfig(**config(epochs=1)),
        data=image_data(),
        out_dir=tmp_path,
        formats=("safetensors",),
    )
    assert report.teacher is None
    assert report.compression is None
    assert report.data.train_samples + report.data.eval_samples == 192


def test_an_export_format_that_fails_is_left_out_with_a_warning_in_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: object) -> None:
        raise RuntimeError("the ONNX export does not reproduce the PyTorch model")

    monkeypatch.setitem(export._WRITERS, "onnx", fail)
    report = run(
        spec=cnn(4),
        config=DistillConfig(**config(epochs=1)),
        data=image_data(),
        out_dir=tmp_path,
        formats=("safetensors", "onnx"),
    )
    assert report.warnings == [
        "the onnx export was left out, it failed: RuntimeError: the ONNX export does not "
        "reproduce the PyTorch model"
    ]
    written = json.loads((tmp_path / REPORT_NAME).read_text())
    assert written["warnings"] == report.warnings
    assert (tmp_path / "student.safetensors").exists()
    assert not (tmp_path / "student.onnx").exists()


def test_kd_without_teacher_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a teacher"):
        run(
            spec=cnn(4),
            config=DistillConfig(**config(method="kd")),
            data=image_data(),
            out_dir=tmp_path,
        )


def test_validation_data_of_another_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must match"):
        run(
            spec=cnn(4),
            config=DistillConfig(**config()),
            data=image_data(),
            val=image_data(shape=(3, 4, 4)),
            out_dir=tmp_path,
        )


def test_student_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = run(
        spec=cnn(4),
        config=DistillConfig(**config(epochs=1)),
        data=image_data(),
        out_dir=tmp_path / "a",
        formats=("safetensors",),
    )
    b = run(
        spec=cnn(4),
        config=DistillConfig(**config(epochs=1)),
        data=image_data(),
        out_dir=tmp_path / "b",
        formats=("safetensors",),
    )
    assert a.student.accuracy == b.student.accuracy
    sa, _ = load_student(tmp_path / "a")
    sb, _ = load_student(tmp_path / "b")
    for x, y in zip(sa.state_dict().values(), sb.state_dict().values(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("graph", ["student.torchscript.pt", "student.pt2"])
def test_kdserves_own_graph_export_is_a_teacher_like_its_weights(
    tmp_path: Path, graph: str
) -> None:
    """kdserve's TorchScript and .pt2 files normalize raw samples themselves: as a teacher
    they must score what the same weights score, not see the data normalized twice."""
    exported = tmp_path / "teacher"
    run(
        spec=cnn(16),
        config=DistillConfig(**config(epochs=3)),
        data=image_data(),
        out_dir=exported,
        formats=("safetensors", "torchscript", "pt2"),
    )
    data, val = image_data(seed=0), image_data(n=64, seed=1)
    kd = DistillConfig(**config(method="kd", epochs=1, augment="flip"))
    reports = {
        name: run(
            spec=cnn(4),
            config=kd,
            data=data,
            val=val,
            out_dir=tmp_path / name,
            teacher=teacher,
            formats=("safetensors",),
        )
        for name, teacher in {
            "weights": TeacherFile(exported / "student.safetensors", cnn(16)),
            "graph": TeacherFile(exported / graph, allow_code=True),
        }.items()
    }
    by_weights, by_graph = reports["weights"].teacher, reports["graph"].teacher
    assert by_weights is not None
    assert by_graph is not None
    assert by_weights.accuracy is not None
    assert by_weights.accuracy > 0.5
    assert by_graph.accuracy == by_weights.accuracy
    assert by_graph.nll == pytest.approx(by_weights.nll, abs=1e-3)
    assert reports["graph"].student.accuracy == pytest.approx(
        reports["weights"].student.accuracy, abs=0.05
    )
