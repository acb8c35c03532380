"""The exported student is the best validation epoch's (``checkpoint: "best"``, the
default: the latest epoch within one standard error of the best), with optional
``patience``; resume keeps the exported weights."""

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kdcore.contract import DistillConfig
from kdcore.evaluate import predict, score
from kdcore.train import Canceled, Progress, TrainResult, train
from kdcore.train.checkpoint import RunState, standard_error
from tests.kdcore.factories import cnn, config, image_data

# A constant, too-large learning rate: on this data and seed the first epoch is the best
# one (validation accuracy 1.0, then 0.75 and worse), so "best" and "last" differ.
NOISY = {"epochs": 6, "lr": 0.5, "schedule": "constant", "seed": 2}


def _train(out: Path, **overrides: Any) -> TrainResult:
    return train(
        spec=cnn(4),
        config=DistillConfig(**config(**(NOISY | overrides))),
        train_data=image_data(),
        out_dir=out,
    )


def _val_accuracy(result: TrainResult) -> float:
    assert result.val_data is not None
    logits = predict(result.student, result.val_data, result.normalizer)
    return score(logits, result.val_data.y).accuracy


def test_the_best_epoch_is_exported_not_the_last(tmp_path: Path) -> None:
    best = _train(tmp_path / "best")
    last = _train(tmp_path / "last", checkpoint="last")

    accs = [row["val_accuracy"] for row in best.history]
    assert len(accs) == 6
    assert max(accs) > accs[-1], "the setup must make best != last"
    assert best.exported["epoch"] == 1 == best.best["epoch"]
    assert "best validation accuracy" in best.exported["reason"]
    assert _val_accuracy(best) == max(accs)

    assert last.exported["epoch"] == 6
    assert _val_accuracy(last) == accs[-1]
    # Same run, other export: the last epoch's weights differ from the best's.
    assert not all(
        torch.equal(a, b)
        for a, b in zip(
            best.student.state_dict().values(), last.student.state_dict().values(), strict=True
        )
    )


def test_patience_stops_the_stage_and_says_so(tmp_path: Path) -> None:
    result = _train(tmp_path, patience=2)

    assert [row["epoch"] for row in result.history] == [1, 2, 3]  # best at 1, then 2 worse
    assert result.exported["stopped_early"] is True
    assert result.exported["epoch"] == 1
    assert "stopped early after 2 epochs" in result.exported["reason"]
    # Resuming a stopped run trains no more.
    again = _train(tmp_path, patience=2)
    assert len(again.history) == 3


def test_without_validation_data_the_last_epoch_is_exported(tmp_path: Path) -> None:
    result = _train(tmp_path, val_split=0)

    assert result.exported["epoch"] == 6
    assert result.exported["reason"] == "no validation data to choose by: the last epoch"


@pytest.mark.parametrize("stop_after", [1, 4])
def test_a_resumed_run_exports_the_same_best_weights(tmp_path: Path, stop_after: int) -> None:
    full = _train(tmp_path / "full")
    seen = 0

    def count(p: Progress) -> None:
        nonlocal seen
        seen += p.kind == "epoch"

    with pytest.raises(Canceled):
        train(
            spec=cnn(4),
            config=DistillConfig(**config(**NOISY)),
            train_data=image_data(),
            out_dir=tmp_path / "cut",
            on_progress=count,
            should_cancel=lambda: seen >= stop_after,
        )
    resumed = _train(tmp_path / "cut")

    assert resumed.exported == full.exported
    for a, b in zip(
        full.student.state_dict().values(), resumed.student.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_an_epoch_within_the_noise_of_the_best_replaces_it_a_clearly_worse_one_does_not() -> None:
    state = RunState()
    student = nn.Linear(2, 2)
    # 100 validation samples: the standard error at 0.95 is 0.0218.
    assert standard_error(0.95, 100) == pytest.approx(0.02179, abs=1e-5)
    for epoch, acc in enumerate([0.90, 0.95, 0.94, 0.935, 0.90], start=1):
        with torch.no_grad():
            student.weight.fill_(epoch)  # the weights say which epoch they are from
        state.keep_export({"stage": "kd", "epoch": epoch, "val_accuracy": acc}, student, 100)

    assert state.best["epoch"] == 2
    assert state.export["epoch"] == 4  # 0.935 ≥ 0.95 − 0.0218; epoch 5's 0.90 is not
    assert state.export_weights is not None
    assert float(state.export_weights["weight"][0, 0]) == 4.0
