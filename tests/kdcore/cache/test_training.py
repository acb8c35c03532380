"""Training from the teacher cache: hits skip the teacher, resume stays bit-exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdcore.cache import CacheRequest, LocalFolderCache
from kdcore.contract import DistillConfig
from kdcore.data import Dataset
from kdcore.models import build_model
from kdcore.pipeline import REPORT_NAME, TeacherFile, run
from kdcore.train import METRICS_NAME, Canceled, Progress, train
from kdcore.weights import freeze
from tests.kdcore.cache.factories import CountingTeacher
from tests.kdcore.factories import cnn, config, image_data

TEACHER_SHA = "0" * 64
HINT = {"teacher_layer": "inner.relu2", "student_layer": "relu1", "epochs": 1, "lr": 0.01}


@pytest.fixture
def data() -> Dataset:
    return image_data(n=96)


def counting_teacher(data: Dataset) -> CountingTeacher:
    torch.manual_seed(1)
    inner = build_model(cnn(16), data.input_shape, data.num_classes)
    teacher = CountingTeacher(inner)
    freeze(teacher)  # in place
    return teacher


def kd_config(**overrides: object) -> DistillConfig:
    return DistillConfig(
        **config(method="kd", epochs=3, augment="crop_flip", crop_padding=1, teacher_views=2)
        | overrides
    )


def test_second_run_hits_and_never_calls_the_teacher(tmp_path: Path, data: Dataset) -> None:
    request = CacheRequest(LocalFolderCache(tmp_path / "cache"), teacher_sha256=TEACHER_SHA)
    teacher = counting_teacher(data)
    first = train(
        spec=cnn(),
        config=kd_config(),
        train_data=data,
        teacher=teacher,
        out_dir=tmp_path / "a",
        teacher_cache=request,
    )
    assert first.teacher_cache.status == "miss"
    assert teacher.calls > 0
    assert len(list((tmp_path / "cache").iterdir())) == 1

    teacher.calls = 0
    second = train(
        spec=cnn(),
        config=kd_config(),
        train_data=data,
        teacher=teacher,
        out_dir=tmp_path / "b",
        teacher_cache=request,
    )
    assert second.teacher_cache.status == "hit"
    assert second.teacher_cache.key == first.teacher_cache.key
    assert teacher.calls == 0  # not even the shape check
    for a, b in zip(first.student.parameters(), second.student.parameters(), strict=True):
        assert torch.equal(a, b)
    rows = [json.loads(x) for x in (tmp_path / "b" / METRICS_NAME).read_text().splitlines()]
    assert all(r["samples_per_s"] > 0 for r in rows)


def test_logits_beyond_float16_keep_the_teacher_in_the_loop(tmp_path: Path, data: Dataset) -> None:
    """A teacher whose logits fp16 cannot hold (finite in fp32) trains as without a cache."""
    teacher = counting_teacher(data)
    head = [m for m in teacher.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias.fill_(1e5)  # every logit near 1e5 > 65504: softmax is unchanged
    request = CacheRequest(LocalFolderCache(tmp_path / "cache"), teacher_sha256=TEACHER_SHA)
    result = train(
        spec=cnn(),
        config=kd_config(epochs=1),
        train_data=data,
        teacher=teacher,
        out_dir=tmp_path / "a",
        teacher_cache=request,
    )
    assert result.teacher_cache.status == "off"
    assert not list((tmp_path / "cache").glob("*.safetensors"))
    assert all(torch.isfinite(p).all() for p in result.student.parameters())


def test_views_and_k_follow_the_config(tmp_path: Path, data: Dataset) -> None:
    request = CacheRequest(LocalFolderCache(tmp_path / "cache"), teacher_sha256=TEACHER_SHA)
    teacher = counting_teacher(data)
    keys = set()
    variants: list[dict[str, object]] = [{}, {"seed": 1}, {"augment": "none"}, {"teacher_views": 3}]
    for i, o in enumerate(variants):
        result = train(
            spec=cnn(),
            config=kd_config(**o),
            train_data=data,
            teacher=teacher,
            out_dir=tmp_path / str(i),
            teacher_cache=request,
        )
        keys.add(result.teacher_cache.key)
    assert len(keys) == 4
    entries = sorted(p.stat().st_size for p in (tmp_path / "cache").iterdir())
    # 72 training samples, 4 classes, fp16: K=1 (augment none) is the smallest entry
    assert entries[0] >= 72 * 1 * 4 * 2


@pytest.mark.parametrize(("method", "stop_after"), [("kd", 1), ("kd", 2), ("fitnet", 2)], ids=str)
def test_resume_with_a_warm_cache_equals_uninterrupted(
    tmp_path: Path, data: Dataset, method: str, stop_after: int
) -> None:
    hint = {"hint": HINT} if method == "fitnet" else {}
    cfg = kd_config(method=method, **hint)
    spec = cnn(dropout=0.3)
    teacher = counting_teacher(data)
    request = CacheRequest(LocalFolderCache(tmp_path / "cache"), teacher_sha256=TEACHER_SHA)
    full = train(
        spec=spec,
        config=cfg,
        train_data=data,
        teacher=teacher,
        out_dir=tmp_path / "full",
        teacher_cache=request,
    )
    seen = 0

    def count(p: Progress) -> None:
        nonlocal seen
        seen += p.kind == "epoch"

    with pytest.raises(Canceled):
        train(
            spec=spec,
            config=cfg,
            train_data=data,
            teacher=teacher,
            out_dir=tmp_path / "cut",
            teacher_cache=request,
            on_progress=count,
            should_cancel=lambda: seen >= stop_after,
        )
    resumed = train(
        spec=spec,
        config=cfg,
        train_data=data,
        teacher=teacher,
        out_dir=tmp_path / "cut",
        teacher_cache=request,
    )
    assert resumed.teacher_cache.status == "hit"
    for (name, a), b in zip(
        full.student.state_dict().items(), resumed.student.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"{name} differs after resuming from epoch {stop_after}"


def test_a_kd_step_with_a_warm_cache_never_calls_the_teacher(tmp_path: Path, data: Dataset) -> None:
    """FitNets: the hint stage still runs the teacher (hint maps are not cached), KD not."""
    teacher = counting_teacher(data)
    request = CacheRequest(LocalFolderCache(tmp_path / "cache"), teacher_sha256=TEACHER_SHA)
    cfg = kd_config(method="fitnet", hint=HINT)
    train(
        spec=cnn(),
        config=cfg,
        train_data=data,
        teacher=teacher,
        out_dir=tmp_path / "a",
        teacher_cache=request,
    )
    calls: dict[str, int] = {}

    def record(p: Progress) -> None:
        calls[p.stage] = teacher.calls

    teacher.calls = 0
    train(
        spec=cnn(),
        config=cfg,
        train_data=data,
        teacher=teacher,
        out_dir=tmp_path / "b",
        teacher_cache=request,
        on_progress=record,
    )
    assert calls["hint"] > 0
    assert calls["kd"] == calls["hint"]  # no call during the KD stage


def test_pipeline_reports_miss_then_hit(tmp_path: Path) -> None:
    data = image_data(n=96)
    teacher_out = tmp_path / "teacher"
    run(
        spec=cnn(16),
        config=DistillConfig(**config(epochs=1)),
        data=data,
        out_dir=teacher_out,
        formats=("safetensors",),
    )
    teacher = TeacherFile(teacher_out / "student.safetensors", cnn(16))
    statuses = []
    for out in ("a", "b"):
        report = run(
            spec=cnn(),
            config=kd_config(epochs=1),
            data=data,
            out_dir=tmp_path / out,
            teacher=teacher,
            formats=("safetensors",),
            teacher_cache=LocalFolderCache(tmp_path / "cache"),
        )
        saved = json.loads((tmp_path / out / REPORT_NAME).read_text())["teacher_cache"]
        assert saved == report.teacher_cache.model_dump(mode="json")
        statuses.append(saved["status"])
        assert saved["bytes"] > 0
        assert len(saved["key"]) == 64
    assert statuses == ["miss", "hit"]
    plain = run(
        spec=cnn(),
        config=kd_config(epochs=1),
        data=data,
        out_dir=tmp_path / "c",
        teacher=teacher,
        formats=("safetensors",),
    )
    assert plain.teacher_cache.status == "off"
    assert plain.teacher_cache.key is None
