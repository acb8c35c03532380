"""Training from the teacher cache: hits skip the teacher, resume stays bit-exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from kdcore.cache import CacheRequest, LocalFolderCache
from kdcore.contract import CnnSpec, DistillConfig
from kdcore.data import Dataset
from kdcore.models import build_model
from kdcore.pipeline import REPORT_NAME, TeacherFile, run
from kdcore.train import METRICS_NAME, Canceled, Progress, TrainResult, train
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


def train_cached(
    tmp_path: Path,
    out: str,
    teacher: torch.nn.Module,
    data: Dataset,
    *,
    spec: CnnSpec | None = None,
    cfg: DistillConfig | None = None,
    **kwargs: Any,
) -> TrainResult:
    """KD (by default) of ``cnn()`` into ``tmp_path/out``, on the cache in ``tmp_path/cache``."""
    return train(
        spec=spec or cnn(),
        config=cfg or kd_config(),
        train_data=data,
        teacher=teacher,
        out_dir=tmp_path / out,
        teacher_cache=CacheRequest(LocalFolderCache(tmp_path / "cache"), TEACHER_SHA),
        **kwargs,
    )


def test_second_run_hits_and_never_calls_the_teacher(tmp_path: Path, data: Dataset) -> None:
    teacher = counting_teacher(data)
    first = train_cached(tmp_path, "a", teacher, data)
    assert first.teacher_cache.status == "miss"
    assert teacher.calls > 0
    assert len(list((tmp_path / "cache").iterdir())) == 1

    teacher.calls = 0
    second = train_cached(tmp_path, "b", teacher, data)
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
    result = train_cached(tmp_path, "a", teacher, data, cfg=kd_config(epochs=1))
    assert result.teacher_cache.status == "off"
    assert not list((tmp_path / "cache").glob("*.safetensors"))
    assert all(torch.isfinite(p).all() for p in result.student.parameters())


def test_views_and_k_follow_the_config(tmp_path: Path, data: Dataset) -> None:
    teacher = counting_teacher(data)
    keys = set()
    variants: list[dict[str, object]] = [
        {},
        {"seed": 1},
        {"augment": "none"},
        {"teacher_views": 3},
        {"cutout": 2},
        {"augment": "none", "cutout": 2},  # cutout alone still needs K views
    ]
    for i, o in enumerate(variants):
        result = train_cached(tmp_path, str(i), teacher, data, cfg=kd_config(**o))
        keys.add(result.teacher_cache.key)
    assert len(keys) == 6
    entries = sorted(p.stat().st_size for p in (tmp_path / "cache").iterdir())
    # 72 training samples, 4 classes, fp16: K=1 (augment none) is the only small entry
    assert entries[0] >= 72 * 1 * 4 * 2
    assert entries[1] >= 72 * 2 * 4 * 2


@pytest.mark.parametrize(("method", "stop_after"), [("kd", 1), ("kd", 2), ("fitnet", 2)], ids=str)
def test_resume_with_a_warm_cache_equals_uninterrupted(
    tmp_path: Path, data: Dataset, method: str, stop_after: int
) -> None:
    hint = {"hint": HINT} if method == "fitnet" else {}
    cfg = kd_config(method=method, **hint)
    spec = cnn(dropout=0.3)
    teacher = counting_teacher(data)
    full = train_cached(tmp_path, "full", teacher, data, spec=spec, cfg=cfg)
    seen = 0

    def count(p: Progress) -> None:
        nonlocal seen
        seen += p.kind == "epoch"

    with pytest.raises(Canceled):
        train_cached(
            tmp_path,
            "cut",
            teacher,
            data,
            spec=spec,
            cfg=cfg,
            on_progress=count,
            should_cancel=lambda: seen >= stop_after,
        )
    resumed = train_cached(tmp_path, "cut", teacher, data, spec=spec, cfg=cfg)
    assert resumed.teacher_cache.status == "hit"
    for (name, a), b in zip(
        full.student.state_dict().items(), resumed.student.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"{name} differs after resuming from epoch {stop_after}"


def test_fitnet_with_a_warm_cache_runs_the_teacher_only_for_the_hint_shape(
    tmp_path: Path, data: Dataset
) -> None:
    """Both entries hit: the hint stage reads the hint maps, the KD stage the logits; the
    teacher runs once, on two samples, to learn the hint map's shape."""
    teacher = counting_teacher(data)
    cfg = kd_config(method="fitnet", hint=HINT)
    first = train_cached(tmp_path, "a", teacher, data, cfg=cfg)
    assert (first.teacher_cache.status, first.hint_cache.status) == ("miss", "miss")
    assert first.hint_cache.key != first.teacher_cache.key
    calls: dict[str, int] = {}

    def record(p: Progress) -> None:
        calls[p.stage] = teacher.calls

    teacher.calls = 0
    second = train_cached(tmp_path, "b", teacher, data, cfg=cfg, on_progress=record)
    assert (second.teacher_cache.status, second.hint_cache.status) == ("hit", "hit")
    assert calls == {"hint": 1, "kd": 1}


def test_hint_maps_over_the_budget_keep_the_teacher_in_the_hint_stage(
    tmp_path: Path, data: Dataset
) -> None:
    teacher = counting_teacher(data)
    cfg = kd_config(method="fitnet", hint=HINT)
    store = LocalFolderCache(tmp_path / "cache")
    request = CacheRequest(store, TEACHER_SHA, entry_max_bytes=1000)
    calls: dict[str, int] = {}

    def record(p: Progress) -> None:
        calls[p.stage] = teacher.calls

    for out in ("a", "b"):
        teacher.calls = 0
        result = train(
            spec=cnn(),
            config=cfg,
            train_data=data,
            teacher=teacher,
            out_dir=tmp_path / out,
            teacher_cache=request,
            on_progress=record,
        )
        assert result.hint_cache.status == "off"
        assert result.hint_cache.note is not None
        assert "exceed the budget" in result.hint_cache.note
    assert result.teacher_cache.status == "hit"  # the logits are cached all the same
    assert calls["hint"] > 2  # a call per batch in the hint stage
    assert calls["kd"] == calls["hint"]
    assert len(list((tmp_path / "cache").iterdir())) == 1


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
