"""``"hint": "auto"``: the documented rule on real family shapes (kdcore.contract.hints)."""

import json
from pathlib import Path

import pytest

from kdcore.contract import (
    SpecError,
    choose_hint,
    layer_shapes,
    parse_arch,
    parse_config,
    resolve_hint,
)

ROOT = Path(__file__).resolve().parents[3]


def _shapes(arch: object, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return layer_shapes(parse_arch(arch), input_shape, 10)  # type: ignore[arg-type]


def test_resnet_student_of_a_wide_resnet_gets_the_end_of_the_first_stage() -> None:
    choice = choose_hint(
        _shapes({"family": "resnet", "depth": 8}, (3, 32, 32)),
        _shapes({"family": "wrn", "depth": 16, "width": 2}, (3, 32, 32)),
        (3, 32, 32),
    )
    # The last modules at 32×32: the student's first block output, the teacher's
    # first-stage output as block2 first normalizes it (before its strided conv).
    assert (choice.student_layer, choice.teacher_layer) == ("layer1.0.relu2", "block2.0.relu1")
    assert "32×32" in choice.reason


def test_the_cifar10_example_gets_the_first_block_hint_measured_best() -> None:
    # docs/results.md: c1_relu → c1b_relu beat the middle hint by 4.7 points.
    load = lambda name: json.loads((ROOT / "examples/cifar10" / name).read_text())  # noqa: E731
    choice = choose_hint(
        _shapes(load("student.json"), (3, 32, 32)),
        _shapes(load("teacher.json"), (3, 32, 32)),
        (3, 32, 32),
    )
    assert (choice.teacher_layer, choice.student_layer) == ("c1_relu", "c1b_relu")


def test_vector_models_get_their_last_hidden_layers() -> None:
    choice = choose_hint(
        _shapes({"family": "mlp", "hidden": [800, 800]}, (1, 28, 28)),
        _shapes({"family": "mlp", "hidden": [1200, 1200]}, (1, 28, 28)),
        (1, 28, 28),
    )
    assert (choice.teacher_layer, choice.student_layer) == ("relu2", "relu2")
    # A layer listing without the flatten (as a teacher's may be) gives the same rule.
    listed = {"fc1": (16,), "relu1": (16,), "head": (4,)}
    assert choose_hint(listed, listed, (1, 8, 8)).teacher_layer == "relu1"


def test_no_shared_spatial_size_asks_for_the_layers() -> None:
    mlp = _shapes({"family": "mlp", "hidden": [64]}, (3, 32, 32))
    with pytest.raises(SpecError, match='give "teacher_layer" and "student_layer"') as info:
        choose_hint(mlp, _shapes({"family": "resnet", "depth": 8}, (3, 32, 32)), (3, 32, 32))
    assert info.value.loc == ("config", "hint")


def test_fitnet_defaults_to_auto_and_resolution_keeps_epochs_and_lr() -> None:
    assert parse_config({"method": "fitnet"}).hint.auto  # type: ignore[union-attr]
    cfg = parse_config({"method": "fitnet", "hint": {"epochs": 3, "lr": 0.001}})
    student = _shapes({"family": "resnet", "depth": 8}, (3, 32, 32))
    teacher = _shapes({"family": "resnet", "depth": 20}, (3, 32, 32))

    resolved, choice = resolve_hint(cfg, student, teacher, (3, 32, 32))

    assert choice is not None
    assert resolved.hint is not None
    assert (resolved.hint.teacher_layer, resolved.hint.epochs, resolved.hint.lr) == (
        "layer1.2.relu2",
        3,
        0.001,
    )
    assert resolved.auto_fields == []
    assert cfg.auto_fields == ["hint"]
    # Deterministic: the same shapes give the same layers.
    assert resolve_hint(cfg, student, teacher, (3, 32, 32))[0] == resolved
    # An explicit pair is left alone.
    assert resolve_hint(resolved, student, teacher, (3, 32, 32)) == (resolved, None)


@pytest.mark.parametrize(
    "hint",
    [{"teacher_layer": "relu1"}, {"student_layer": "relu1"}],
)
def test_half_an_auto_hint_is_refused(hint: dict[str, str]) -> None:
    with pytest.raises(SpecError, match='both "auto" or both layer paths'):
        parse_config({"method": "fitnet", "hint": hint})


def test_auto_kd_weights_parse_and_scratch_ignores_them() -> None:
    cfg = parse_config({"method": "kd", "temperature": "auto", "alpha": "auto"})
    assert cfg.auto_fields == ["temperature", "alpha"]
    assert parse_config({"method": "scratch", "temperature": "auto"}).auto_fields == []
    with pytest.raises(SpecError, match="temperature"):
        parse_config({"method": "kd", "temperature": "hot"})
    with pytest.raises(ValueError, match="resolved"):
        cfg.kd_weights()
