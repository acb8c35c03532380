"""Automatic choices resolved before training (hint, temperature, alpha) and the baseline
run: recorded in report.json, deterministic, and what the docs say they are."""

from pathlib import Path
from typing import Any

import pytest

from kdcore.contract import DistillConfig
from kdcore.pipeline import PROBES_DIR, TeacherFile, baseline_config, run
from kdcore.report import Report
from kdcore.train import Progress
from kdcore.tune import ALPHAS, TEMPERATURES, ProbeResult, choose_kd_weights, probe_epochs
from tests.kdcore.factories import cnn, config, image_data


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> TeacherFile:
    out = tmp_path_factory.mktemp("teacher")
    run(
        spec=cnn(16),
        config=DistillConfig(**config(epochs=3)),
        data=image_data(),
        out_dir=out,
        formats=("safetensors",),
    )
    return TeacherFile(out / "student.safetensors", cnn(16))


def _job(out: Path, teacher: TeacherFile | None, **overrides: Any) -> Report:
    return run(
        spec=cnn(4),
        config=DistillConfig(**config(**overrides)),
        data=image_data(),
        out_dir=out,
        teacher=teacher,
        formats=("safetensors",),
    )


def test_the_probe_grid_and_budget() -> None:
    both = DistillConfig(method="kd", temperature="auto", alpha="auto", epochs=15)
    seen: list[tuple[float, float, int]] = []

    def probe(cfg: DistillConfig, name: str) -> ProbeResult:
        t, a = cfg.kd_weights()
        seen.append((t, a, cfg.epochs))
        assert cfg.method == "kd"
        assert cfg.checkpoint == "best"
        assert not cfg.baseline
        # Ties on accuracy go to the lower NLL: T 8, alpha 0.1 here.
        return ProbeResult(0.9 if t >= 4 else 0.8, 1.0 / t + a)

    resolved, record = choose_kd_weights(both, probe)

    assert [(t, a) for t, a, _ in seen] == [(t, a) for t in TEMPERATURES for a in ALPHAS]
    assert {e for *_, e in seen} == {probe_epochs(15)} == {2}
    assert resolved.kd_weights() == (8.0, 0.1)
    assert record is not None
    assert record["value"] == {"temperature": 8.0, "alpha": 0.1}
    assert len(record["probes"]) == 6
    assert record["fields"] == ["temperature", "alpha"]
    # Only alpha "auto": the temperature stays, two probes.
    only_alpha, rec = choose_kd_weights(DistillConfig(method="kd", alpha="auto"), probe)
    assert only_alpha.temperature == 4.0
    assert rec is not None
    assert len(rec["probes"]) == 2
    # Nothing "auto": no probes at all.
    n = len(seen)
    assert choose_kd_weights(DistillConfig(method="kd"), probe) == (
        DistillConfig(method="kd"),
        None,
    )
    assert len(seen) == n


def test_auto_temperature_is_chosen_by_probes_recorded_and_deterministic(
    tmp_path: Path, teacher: TeacherFile
) -> None:
    reports: list[Report] = []
    stages: list[tuple[str, float]] = []
    for name in ("a", "b"):
        reports.append(
            run(
                spec=cnn(4),
                config=DistillConfig(**config(method="kd", epochs=3, temperature="auto")),
                data=image_data(),
                out_dir=tmp_path / name,
                teacher=teacher,
                formats=("safetensors",),
                on_progress=lambda p: stages.append((p.stage, p.fraction)),
            )
        )
    a, b = reports

    kd = a.choices["kd"]
    assert kd["fields"] == ["temperature"]
    assert [p["temperature"] for p in kd["probes"]] == list(TEMPERATURES)
    assert a.config["temperature"] == kd["value"]["temperature"] != "auto"
    assert a.config["alpha"] == 0.1  # not auto: kept
    assert sorted(p.name for p in (tmp_path / "a" / PROBES_DIR).iterdir()) == sorted(
        f"T{t:g}-alpha0.1" for t in TEMPERATURES
    )
    # The same job twice: the same probe scores and the same choice.
    assert [p["val_accuracy"] for p in kd["probes"]] == [
        p["val_accuracy"] for p in b.choices["kd"]["probes"]
    ]
    assert b.config["temperature"] == a.config["temperature"]
    # One progress scale: probes first, then the student; never backwards within a job.
    first = stages[: len(stages) // 2]
    assert first[0][0] == "probe"
    assert first[-1] == ("kd", 1.0)
    fractions = [f for _, f in first]
    assert fractions == sorted(fractions)


def test_auto_hint_is_resolved_from_shapes_and_recorded(
    tmp_path: Path, teacher: TeacherFile
) -> None:
    report = _job(tmp_path, teacher, method="fitnet", epochs=1, hint={"epochs": 1})

    hint = report.choices["hint"]
    # The teacher cnn(16) and student cnn(4) share 8×8 maps up to their pool: relu2.
    assert (hint["teacher_layer"], hint["student_layer"]) == ("relu2", "relu2")
    assert report.config["hint"]["teacher_layer"] == "relu2"
    assert set(report.stage_seconds) == {"hint", "kd"}


def test_baseline_trains_the_student_alone_and_reports_the_gain(
    tmp_path: Path, teacher: TeacherFile
) -> None:
    seen: list[Progress] = []
    report = run(
        spec=cnn(4),
        config=DistillConfig(**config(method="kd", epochs=2, baseline=True)),
        data=image_data(),
        out_dir=tmp_path / "kd",
        teacher=teacher,
        formats=("safetensors",),
        on_progress=seen.append,
    )
    alone = _job(tmp_path / "scratch", None, epochs=2)

    assert report.baseline is not None
    assert report.student.accuracy is not None
    assert report.baseline.accuracy is not None
    # The baseline is exactly the scratch job with the same settings.
    assert report.baseline.accuracy == alone.student.accuracy
    assert report.baseline.nll == alone.student.nll
    assert report.gain_points == pytest.approx(
        100 * (report.student.accuracy - report.baseline.accuracy)
    )
    assert baseline_config(DistillConfig(**config(method="kd", baseline=True))) == DistillConfig(
        **config(method="scratch")
    )
    # The baseline's epochs show as progress steps without metrics, after the student's.
    tail = [p for p in seen if p.stage == "baseline"]
    assert tail
    assert all(p.kind == "step" and not p.metrics for p in tail)
    assert seen[-1].stage == "baseline"
    assert seen[-1].fraction == 1.0
