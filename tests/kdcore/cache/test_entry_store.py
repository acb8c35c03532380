from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.cache import (
    CorruptEntry,
    LocalFolderCache,
    TeacherOutputs,
    cache_key,
    compute_outputs,
    load_or_build,
    load_outputs,
)
from kdcore.cache.entry import save_outputs
from kdcore.contract import DistillConfig
from kdcore.data import Dataset, Normalizer, ViewBank, ViewPolicy
from kdcore.losses import kd_loss
from kdcore.runtime import Runtime
from kdcore.train import train
from kdcore.weights import freeze
from tests.kdcore.cache.factories import key_inputs
from tests.kdcore.factories import cnn, config, image_data

FP32 = Runtime(torch.device("cpu"), "fp32", "contiguous")

KEY = cache_key(key_inputs())
K = 4


@pytest.fixture(scope="module")
def data() -> Dataset:
    return image_data(n=64)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, data: Dataset) -> nn.Module:
    out = tmp_path_factory.mktemp("teacher")
    result = train(
        spec=cnn(16), config=DistillConfig(**config(epochs=3)), train_data=data, out_dir=out
    )
    return freeze(result.student)


def _outputs(teacher: nn.Module, data: Dataset) -> TeacherOutputs:
    policy = ViewPolicy(crop_padding=1, crop=True, flip=True)
    bank = ViewBank.draw(policy, len(data), K, seed=0, size=(data.x.shape[-2], data.x.shape[-1]))
    normalizer = Normalizer.fit(data)
    return compute_outputs(teacher, data.x, normalizer, bank, runtime=FP32)


def _shape(data: Dataset) -> tuple[int, int, int]:
    return (len(data), K, data.num_classes)


def test_outputs_are_the_teacher_on_each_view_and_round_trip(
    tmp_path: Path, teacher: nn.Module, data: Dataset
) -> None:
    outputs = _outputs(teacher, data)
    assert outputs.values.shape == _shape(data)
    assert outputs.values.dtype == torch.float16
    normalizer = Normalizer.fit(data)
    idx, view = torch.tensor([3, 9, 40]), torch.tensor([0, 3, 1])
    with torch.no_grad():
        direct = teacher(outputs.bank.apply(normalizer(data.x[idx]), idx, view))
    assert torch.allclose(outputs.lookup(idx, view), direct, atol=2e-2, rtol=1e-3)

    save_outputs(tmp_path / "e", outputs, key=KEY, inputs="{}")
    back = load_outputs(tmp_path / "e", key=KEY, shape=_shape(data))
    assert torch.equal(back.values, outputs.values)
    assert torch.equal(back.bank.params, outputs.bank.params)
    assert torch.equal(back.bank.start, outputs.bank.start)
    assert back.bank.policy == outputs.bank.policy
    with pytest.raises(CorruptEntry, match="another key"):
        load_outputs(tmp_path / "e", key="f" * 64, shape=_shape(data))
    with pytest.raises(CorruptEntry, match="expected"):
        load_outputs(tmp_path / "e", key=KEY, shape=(len(data), K + 1, data.num_classes))


def test_fp16_storage_changes_the_kd_loss_by_a_tiny_amount(
    teacher: nn.Module, data: Dataset
) -> None:
    """The figure in kdcore.cache.entry's docstring."""
    outputs = _outputs(teacher, data)
    normalizer = Normalizer.fit(data)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, data.num_classes))
    worst = 0.0
    for v in range(K):
        idx, view = torch.arange(len(data)), torch.full((len(data),), v)
        xb = outputs.bank.apply(normalizer(data.x), idx, view)
        with torch.no_grad():
            exact = teacher(xb)  # float32
            s = student(xb)
        a, _ = kd_loss(s, exact, data.y, temperature=4.0, alpha=0.1)
        b, _ = kd_loss(s, outputs.lookup(idx, view), data.y, temperature=4.0, alpha=0.1)
        worst = max(worst, abs(float(a - b)) / float(a))
    assert exact.abs().max() > 2  # a trained teacher, not near-zero logits
    assert worst < 5e-4


def _counting_build(
    teacher: nn.Module, data: Dataset
) -> tuple[list[int], Callable[[], TeacherOutputs]]:
    calls = [0]

    def build() -> TeacherOutputs:
        calls[0] += 1
        return _outputs(teacher, data)

    return calls, build


def _save(path: Path, outputs: TeacherOutputs) -> None:
    save_outputs(path, outputs, key=KEY, inputs="{}")


def _tamper(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # a byte of the last tensor
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize("damage", [_tamper, _truncate])
def test_a_damaged_entry_is_discarded_and_rebuilt(
    tmp_path: Path, teacher: nn.Module, data: Dataset, damage: Callable[[Path], None]
) -> None:
    store = LocalFolderCache(tmp_path)
    calls, build = _counting_build(teacher, data)
    first, info = load_or_build(store, KEY, shape=_shape(data), build=build, save=_save)
    assert info.status == "miss"
    assert info.bytes > 0
    _, info = load_or_build(store, KEY, shape=_shape(data), build=build, save=_save)
    assert (info.status, calls[0]) == ("hit", 1)

    path = store.get(KEY)
    assert path is not None
    damage(path)
    with pytest.raises(CorruptEntry):
        load_outputs(path, key=KEY, shape=_shape(data))
    again, info = load_or_build(store, KEY, shape=_shape(data), build=build, save=_save)
    assert (info.status, calls[0]) == ("miss", 2)
    assert torch.equal(again.values, first.values)
    load_outputs(path, key=KEY, shape=_shape(data))  # valid again


def test_two_racing_builders_leave_one_valid_entry(
    tmp_path: Path, teacher: nn.Module, data: Dataset
) -> None:
    store = LocalFolderCache(tmp_path)
    start = threading.Barrier(2)
    results: list[str] = []

    def builder() -> None:
        def build() -> TeacherOutputs:
            start.wait(timeout=10)  # both have missed before either publishes
            return _outputs(teacher, data)

        _, info = load_or_build(store, KEY, shape=_shape(data), build=build, save=_save)
        results.append(info.status)

    threads = [threading.Thread(target=builder) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == ["miss", "miss"]
    assert [p.name for p in tmp_path.iterdir()] == [f"{KEY}.safetensors"]  # no temp left
    load_outputs(tmp_path / f"{KEY}.safetensors", key=KEY, shape=_shape(data))


def test_keys_must_be_sha256_hex(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        LocalFolderCache(tmp_path).get("../escape")
