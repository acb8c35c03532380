from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.contract import DistillConfig, parse_arch
from kdcore.models import build_model
from kdcore.train import CHECKPOINT_NAME, METRICS_NAME, Canceled, Diverged, Progress, train
from kdcore.weights import freeze, load_model
from tests.kdcore.factories import cnn, config, image_data

HINT = {"teacher_layer": "relu2", "student_layer": "relu1", "epochs": 2, "lr": 0.01}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    out = tmp_path_factory.mktemp("teacher")
    result = train(
        spec=cnn(16),
        config=DistillConfig(**config(epochs=3)),
        train_data=image_data(),
        out_dir=out,
    )
    return freeze(result.student)


def test_scratch_learns_and_writes_metrics_and_checkpoint(tmp_path: Path) -> None:
    result = train(
        spec=cnn(),
        config=DistillConfig(**config(epochs=4)),
        train_data=image_data(),
        out_dir=tmp_path,
    )
    rows = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_accuracy"] > 0.5  # 4 classes: chance is 0.25
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["stage_index"] == 0
    assert ckpt["epoch"] == 4
    assert ckpt["spec"]["family"] == "cnn"
    assert set(ckpt) >= {"student", "optimizer", "scheduler", "rng", "config", "best", "normalizer"}
    assert not result.student.training


def _record_grads(model: nn.Module, counts: dict[str, int]) -> None:
    """Count, per parameter, the backward passes that gave it a non-zero gradient."""
    counts.update({name: 0 for name, _ in model.named_parameters()})
    for name, p in model.named_parameters():

        def hook(g: torch.Tensor, name: str = name) -> None:
            if g.abs().sum() > 0:
                counts[name] += 1

        p.register_hook(hook)


def test_every_parameter_gets_a_gradient_in_kd(
    tmp_path: Path, teacher: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: dict[str, int] = {}
    real_build = build_model

    def build_and_record(*args: object, **kw: object) -> nn.Module:
        model = real_build(*args, **kw)  # type: ignore[arg-type]
        _record_grads(model, counts)
        return model

    monkeypatch.setattr("kdcore.train.loop.build_model", build_and_record)
    train(
        spec=cnn(),
        config=DistillConfig(**config(method="kd", epochs=1)),
        train_data=image_data(),
        teacher=teacher,
        out_dir=tmp_path,
    )
    assert counts
    assert all(c > 0 for c in counts.values()), counts


def test_hint_stage_trains_only_up_to_the_guided_layer(
    tmp_path: Path, teacher: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    models: list[nn.Module] = []
    counts: dict[str, int] = {}
    real_build = build_model

    def build_and_keep(*args: object, **kw: object) -> nn.Module:
        model = real_build(*args, **kw)  # type: ignore[arg-type]
        models.append(model)
        _record_grads(model, counts)
        return model

    monkeypatch.setattr("kdcore.train.loop.build_model", build_and_keep)
    cfg = DistillConfig(**config(method="fitnet", epochs=1, hint=HINT))
    snapshots: dict[str, dict[str, torch.Tensor]] = {}

    def on_progress(p: Progress) -> None:
        if p.kind == "epoch" and p.stage == "hint" and p.epoch == p.epochs:
            snapshots["after_hint"] = {k: v.clone() for k, v in models[0].state_dict().items()}
            snapshots["grads"] = dict(counts)  # type: ignore[arg-type]

    train(
        spec=cnn(),
        config=cfg,
        train_data=image_data(),
        teacher=teacher,
        out_dir=tmp_path,
        on_progress=on_progress,
    )
    torch.manual_seed(0)  # train() seeds the same way before building the student
    start = real_build(cnn(), (3, 8, 8), 4)
    after = snapshots["after_hint"]
    for name, value in start.state_dict().items():
        changed = not torch.equal(value, after[name])
        if name.split(".")[0] in {"conv1", "bn1"}:
            assert changed, f"{name} is below the guided layer and should train"
        else:
            assert not changed, f"{name} is above the guided layer and must not change"
    lower = {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"}
    grads = snapshots["grads"]
    assert all(grads[n] > 0 for n in lower)
    assert all(grads[n] == 0 for n in grads if n.split(".")[0] in {"conv2", "bn2", "fc"})
    # then stage 2 (KD) trains everything
    assert all(c > 0 for c in counts.values())


@pytest.mark.parametrize("stop_after", [1, 2, 3])
def test_resume_from_any_epoch_equals_uninterrupted(
    tmp_path: Path, teacher: nn.Module, stop_after: int
) -> None:
    cfg = DistillConfig(
        **config(method="fitnet", epochs=2, hint=HINT, augment="crop_flip", crop_padding=1)
    )
    spec = cnn(dropout=0.3)
    data = image_data()
    full = train(spec=spec, config=cfg, train_data=data, teacher=teacher, out_dir=tmp_path / "full")

    epochs_seen = 0

    def cancel_after() -> bool:
        return epochs_seen >= stop_after

    def count(p: Progress) -> None:
        nonlocal epochs_seen
        if p.kind == "epoch":
            epochs_seen += 1

    with pytest.raises(Canceled):
        train(
            spec=spec,
            config=cfg,
            train_data=data,
            teacher=teacher,
            out_dir=tmp_path / "cut",
            on_progress=count,
            should_cancel=cancel_after,
        )
    resumed = train(
        spec=spec, config=cfg, train_data=data, teacher=teacher, out_dir=tmp_path / "cut"
    )
    for (name, a), b in zip(
        full.student.state_dict().items(), resumed.student.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), f"{name} differs after resuming from epoch {stop_after}"
    full_rows = (tmp_path / "full" / METRICS_NAME).read_text().splitlines()
    cut_rows = (tmp_path / "cut" / METRICS_NAME).read_text().splitlines()
    assert len(full_rows) == len(cut_rows) == 4


def test_diverging_training_stops_with_the_place(tmp_path: Path) -> None:
    data = image_data()
    cfg = DistillConfig(**config(method="scratch", lr=10.0, momentum=0.9, epochs=3))
    spec = parse_arch({"family": "mlp", "hidden": [256, 256, 256]})
    with pytest.raises(Diverged) as info:
        train(spec=spec, config=cfg, train_data=data, out_dir=tmp_path, val_data=None)
    assert info.value.stage == "scratch"
    assert info.value.epoch >= 1
    assert info.value.step >= 1


def test_progress_reaches_one_and_is_monotonic(tmp_path: Path, teacher: nn.Module) -> None:
    seen: list[float] = []
    train(
        spec=cnn(),
        config=DistillConfig(**config(method="kd", epochs=2)),
        train_data=image_data(),
        teacher=teacher,
        out_dir=tmp_path,
        on_progress=lambda p: seen.append(p.fraction),
        progress_every=1,
    )
    assert seen == sorted(seen)
    assert seen[-1] == pytest.approx(1.0)


def test_teacher_with_other_classes_is_refused(tmp_path: Path) -> None:
    other = freeze(build_model(cnn(), (3, 8, 8), 7))
    with pytest.raises(ValueError, match="7,.*4 classes"):
        train(
            spec=cnn(),
            config=DistillConfig(**config(method="kd")),
            train_data=image_data(),
            teacher=other,
            out_dir=tmp_path,
        )


def test_unfrozen_teacher_is_refused(tmp_path: Path) -> None:
    teacher = build_model(cnn(), (3, 8, 8), 4)  # train mode, requires grad
    with pytest.raises(ValueError, match=r"frozen.*kdcore\.weights\.freeze"):
        train(
            spec=cnn(),
            config=DistillConfig(**config(method="kd")),
            train_data=image_data(),
            teacher=teacher,
            out_dir=tmp_path,
        )
    assert teacher.training  # train() checks the teacher; it never changes it


@pytest.mark.parametrize(
    ("compile_with", "augment"),
    [("script", "none"), ("trace", "flip")],
    ids=["script-cached-logits", "trace-teacher-every-step"],
)
def test_kd_with_a_torchscript_teacher(
    tmp_path: Path, teacher: nn.Module, compile_with: str, augment: str
) -> None:
    """docs/design.md: TorchScript teachers serve plain KD (not FitNets hints)."""
    path = tmp_path / "teacher.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit itself is deprecated
        program = (
            torch.jit.script(teacher)
            if compile_with == "script"
            else torch.jit.trace(teacher, torch.zeros(2, 3, 8, 8))
        )
        torch.jit.save(program, str(path))
        scripted = freeze(load_model(path, None, (3, 8, 8), 4, allow_code=True))
    assert isinstance(scripted, torch.jit.ScriptModule)
    before = {k: v.clone() for k, v in scripted.state_dict().items()}

    result = train(
        spec=cnn(),
        config=DistillConfig(**config(method="kd", epochs=2, augment=augment)),
        train_data=image_data(),
        teacher=scripted,
        out_dir=tmp_path / "out",
    )
    assert [(r["stage"], r["epoch"]) for r in result.history] == [("kd", 1), ("kd", 2)]
    assert all(math.isfinite(r["train_kd"]) for r in result.history)
    assert result.history[-1]["val_accuracy"] > 0.5  # 4 classes: chance is 0.25
    for name, value in scripted.state_dict().items():
        assert torch.equal(value, before[name]), f"the teacher's {name} changed"
    assert not scripted.training


def test_batch_larger_than_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        train(
            spec=cnn(),
            config=DistillConfig(**config(batch_size=1000)),
            train_data=image_data(),
            out_dir=tmp_path,
        )


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "sgd", "nesterov": True, "schedule": "multistep"},
        {"optimizer": "adam", "lr": 1e-3, "schedule": "constant"},
        {"optimizer": "adamw", "lr": 1e-3},
        {"optimizer": "rmsprop", "lr": 1e-3},
        {"precision": "bf16"},
        {"augment": "crop_flip"},
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_optimizers_schedules_precision_and_augmentation_train(
    tmp_path: Path, overrides: dict[str, object]
) -> None:
    result = train(
        spec=cnn(),
        config=DistillConfig(**config(epochs=3, **overrides)),
        train_data=image_data(),
        out_dir=tmp_path,
    )
    rows = result.history
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_multistep_schedule_drops_the_learning_rate_at_its_milestones(tmp_path: Path) -> None:
    cfg = DistillConfig(**config(epochs=4, schedule="multistep", milestones=[0.5], gamma=0.1))
    rows = train(spec=cnn(), config=cfg, train_data=image_data(), out_dir=tmp_path).history
    assert rows[0]["lr"] == pytest.approx(0.05)
    assert rows[-1]["lr"] == pytest.approx(0.005)


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        train(
            spec=cnn(),
            config=DistillConfig(**config(device="cuda")),
            train_data=image_data(),
            out_dir=tmp_path,
        )
