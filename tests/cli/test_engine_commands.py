"""The engine commands, through typer's runner (fast) and as real processes (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"
runner = CliRunner()


def test_schema_prints_a_json_schema() -> None:
    result = runner.invoke(app, ["schema", "arch"])
    assert result.exit_code == 0
    assert "resnet" in json.loads(result.stdout)["discriminator"]["mapping"]


def test_inspect_lists_paths_shapes_params_and_macs() -> None:
    result = runner.invoke(
        app, ["inspect", "--arch", str(DIGITS / "student.json"), "--input-shape", "1,8,8", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    conv2 = next(layer for layer in summary["layers"] if layer["path"] == "relu2")
    assert conv2["shape"] == [16, 8, 8]
    assert summary["params"] > 0
    assert summary["macs"] > 0


def test_bad_input_shape_is_a_clear_error() -> None:
    result = runner.invoke(
        app, ["inspect", "--arch", str(DIGITS / "student.json"), "--input-shape", "a,b"]
    )
    assert result.exit_code == 2
    assert "--input-shape must be positive integers" in result.output


def test_train_refuses_a_teacher_method(tmp_path: Path) -> None:
    cfg = tmp_path / "kd.json"
    cfg.write_text(json.dumps({"method": "kd"}))
    data = tmp_path / "d.npz"
    data.write_bytes(b"")
    result = runner.invoke(
        app,
        [
            "train",
            "--arch",
            str(DIGITS / "student.json"),
            "--data",
            str(data),
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    assert "kdserve distill" in result.output


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"method": "scratch", "temperature": -1, "epochz": 3}))
    result = runner.invoke(
        app,
        [
            "train",
            "--arch",
            str(DIGITS / "student.json"),
            "--data",
            str(cfg),
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2
    assert "temperature" in result.output
    assert "epochz" in result.output


def test_distill_kd_from_a_torchscript_teacher(tmp_path: Path) -> None:
    """docs/design.md: with --allow-code, a TorchScript teacher serves plain KD."""
    import numpy as np
    import torch

    from kdcore.models import build_model
    from tests.kdcore.factories import cnn, image_data

    data = image_data(n=96)
    np.savez(tmp_path / "d.npz", x=data.x.numpy(), y=data.y.numpy())
    torch.manual_seed(0)
    teacher = torch.jit.script(build_model(cnn(32), data.input_shape, data.num_classes).eval())
    torch.jit.save(teacher, str(tmp_path / "teacher.pt"))
    cfg = tmp_path / "kd.json"
    cfg.write_text(json.dumps({"method": "kd", "epochs": 2, "batch_size": 32, "device": "cpu"}))

    result = runner.invoke(
        app,
        [
            "distill",
            "--allow-code",
            "--teacher",
            str(tmp_path / "teacher.pt"),
            "--student",
            str(DIGITS / "student.json"),
            "--data",
            str(tmp_path / "d.npz"),
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "out"),
            "--formats",
            "safetensors",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "compression" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "kd"
    assert set(report["stage_seconds"]) == {"kd"}
    assert report["teacher"]["params"] > report["student"]["params"]
    assert report["teacher"]["macs"] > 0


def test_distill_with_a_cache_dir_misses_then_hits(tmp_path: Path) -> None:
    """--cache-dir: the first job builds the teacher's outputs, the second reads them."""
    import numpy as np
    import safetensors.torch
    import torch

    from kdcore.models import build_model
    from tests.kdcore.factories import cnn, image_data

    data = image_data(n=96)
    np.savez(tmp_path / "d.npz", x=data.x.numpy(), y=data.y.numpy())
    torch.manual_seed(0)
    teacher = build_model(cnn(16), data.input_shape, data.num_classes)
    safetensors.torch.save_file(teacher.state_dict(), str(tmp_path / "teacher.safetensors"))
    (tmp_path / "teacher.json").write_text(cnn(16).model_dump_json())
    cfg = tmp_path / "kd.json"
    cfg.write_text(
        json.dumps(
            {"method": "kd", "epochs": 2, "batch_size": 32, "device": "cpu", "augment": "crop_flip"}
        )
    )
    statuses = []
    for out in ("a", "b"):
        result = runner.invoke(
            app,
            [
                "distill",
                "--teacher",
                str(tmp_path / "teacher.safetensors"),
                "--teacher-arch",
                str(tmp_path / "teacher.json"),
                "--student",
                str(DIGITS / "student.json"),
                "--data",
                str(tmp_path / "d.npz"),
                "--config",
                str(cfg),
                "--out",
                str(tmp_path / out),
                "--formats",
                "safetensors",
                "--cache-dir",
                str(tmp_path / "cache"),
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / out / "report.json").read_text())
        statuses.append(report["teacher_cache"]["status"])
    assert statuses == ["miss", "hit"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def _kdserve(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("kdserve")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )


@pytest.mark.slow
def test_train_distill_evaluate_as_a_user_would(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_digits.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    train_npz, test_npz = str(tmp_path / "digits-train.npz"), str(tmp_path / "digits-test.npz")
    scratch = tmp_path / "scratch.json"
    scratch.write_text(json.dumps({"method": "scratch", "epochs": 4, "batch_size": 64}))
    fitnet = tmp_path / "fitnet.json"
    fitnet.write_text(
        json.dumps(
            {
                "method": "fitnet",
                "epochs": 3,
                "batch_size": 64,
                "temperature": 4,
                "alpha": 0.1,
                "hint": {"teacher_layer": "relu1", "student_layer": "relu2", "epochs": 1},
            }
        )
    )

    done = _kdserve(
        "train",
        "--arch",
        str(DIGITS / "teacher.json"),
        "--data",
        train_npz,
        "--val",
        test_npz,
        "--config",
        str(scratch),
        "--out",
        str(tmp_path / "t"),
        "--formats",
        "safetensors",
    )
    assert done.returncode == 0, done.stderr
    done = _kdserve(
        "distill",
        "--teacher",
        str(tmp_path / "t" / "student.safetensors"),
        "--teacher-arch",
        str(DIGITS / "teacher.json"),
        "--student",
        str(DIGITS / "student.json"),
        "--data",
        train_npz,
        "--val",
        test_npz,
        "--config",
        str(fitnet),
        "--out",
        str(tmp_path / "s"),
    )
    assert done.returncode == 0, done.stderr
    assert "compression" in done.stdout
    for name in (
        "student.safetensors",
        "student.json",
        "student.torchscript.pt",
        "student.pt2",
        "student.onnx",
        "report.json",
        "metrics.jsonl",
        "checkpoint.pt",
    ):
        assert (tmp_path / "s" / name).exists(), name

    done = _kdserve("evaluate", "--model", str(tmp_path / "s"), "--data", test_npz)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert json.loads(done.stdout)["accuracy"] == pytest.approx(report["student"]["accuracy"])
    assert report["teacher"]["params"] > report["student"]["params"]
    assert report["teacher"]["macs"] > 0

    # A pickled whole model as teacher is refused with advice, and runs nothing.
    bad = tmp_path / "pickled.pt"
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.save(torch.nn.Linear(2, 2), {str(bad)!r})"],
        check=True,
    )
    done = _kdserve(
        "distill",
        "--teacher",
        str(bad),
        "--teacher-arch",
        str(DIGITS / "teacher.json"),
        "--student",
        str(DIGITS / "student.json"),
        "--data",
        train_npz,
        "--config",
        str(fitnet),
        "--out",
        str(tmp_path / "x"),
    )
    assert done.returncode == 2
    assert "state_dict" in done.stderr


@pytest.mark.parametrize("what", ["arch", "config"])
def test_published_schemas_are_current(what: str) -> None:
    """docs/schemas/ must match the code: regenerate with `kdserve schema WHAT`."""
    result = runner.invoke(app, ["schema", what])
    published = json.loads((ROOT / "docs" / "schemas" / f"{what}.schema.json").read_text())
    assert json.loads(result.stdout) == published
