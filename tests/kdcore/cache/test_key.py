from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from kdcore.cache import CACHE_FORMAT_VERSION, cache_key, dataset_sha256, file_sha256
from tests.kdcore.cache.factories import key_inputs
from tests.kdcore.factories import image_data

CHANGED: dict[str, Any] = {
    "teacher_sha256": "c" * 64,
    "data_sha256": "d" * 64,
    "val_split": 0.2,
    "split_seed": 1,
    "normalizer": {"scale": 1 / 255, "mean": [0.5], "std": [0.26]},
    "augment": "crop",
    "crop_padding": 2,
    "cutout": 8,
    "views_seed": 1,
    "views": 8,
    "precision": "bf16",
    "output": "hint",
    "stored_dtype": "bfloat16",
    "version": CACHE_FORMAT_VERSION + 1,
    "tenant": "tenant-b",
}


def test_every_input_has_a_changed_value_here() -> None:
    assert set(CHANGED) == {f.name for f in dataclasses.fields(key_inputs())}


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_key_changes_with_each_input(name: str) -> None:
    base = key_inputs()
    changed = dataclasses.replace(base, **{name: CHANGED[name]})
    assert cache_key(changed) != cache_key(base)


def test_key_is_a_pure_function_of_its_inputs() -> None:
    a = key_inputs(normalizer={"std": [0.25], "mean": [0.5], "scale": 1 / 255})
    assert cache_key(a) == cache_key(key_inputs())
    assert len(cache_key(a)) == 64


def test_dataset_and_file_digests(tmp_path: Path) -> None:
    data = image_data(n=16)
    assert dataset_sha256(data) == dataset_sha256(image_data(n=16))
    assert dataset_sha256(data) != dataset_sha256(image_data(n=16, seed=1))
    relabeled = dataclasses.replace(data, y=torch.roll(data.y, 1))
    assert dataset_sha256(relabeled) != dataset_sha256(data)
    (tmp_path / "f").write_bytes(b"abc")
    assert file_sha256(tmp_path / "f") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
