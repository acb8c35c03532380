"""Tests for kdcore.data.dataset: the in-memory Dataset, its split, augmentation and
batching."""

from __future__ import annotations

import pytest
import torch

from kdcore.data import DataError, Dataset, augment, batches
from tests.kdcore.data.factories import make_dataset

# ------------------------------------------------------------------------ dataset, split


def test_subset() -> None:
    ds = make_dataset([3, 3])
    sub = ds.subset(torch.tensor([4, 0]))
    assert sub.y.tolist() == [1, 0]
    assert torch.equal(sub.x, ds.x[[4, 0]])
    assert sub.classes == ds.classes


def test_dataset_checks_invariants() -> None:
    with pytest.raises(DataError, match="x has 3 samples but y has 2"):
        Dataset(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64), ["a", "b"])
    with pytest.raises(DataError, match="int64"):
        Dataset(torch.zeros(2, 2), torch.zeros(2, dtype=torch.int32), ["a", "b"])


def test_split_is_stratified_disjoint_and_deterministic() -> None:
    ds = make_dataset([50, 30, 20])
    rest, held = ds.split(0.2, seed=7)
    assert len(held) == 20
    assert len(rest) == 80
    assert torch.bincount(held.y).tolist() == [10, 6, 4]
    rest_ids, held_ids = set(rest.x[:, 0].tolist()), set(held.x[:, 0].tolist())
    assert not rest_ids & held_ids
    assert rest_ids | held_ids == set(ds.x[:, 0].tolist())
    again_rest, again_held = ds.split(0.2, seed=7)
    assert torch.equal(again_held.x, held.x)
    assert torch.equal(again_rest.x, rest.x)
    other = ds.split(0.2, seed=8)[1]
    assert not torch.equal(other.x, held.x)


def test_split_rounds_to_the_total_and_keeps_small_classes() -> None:
    ds = make_dataset([7, 7, 7, 2, 1])
    rest, held = ds.split(0.3, seed=0)
    assert len(held) == round(0.3 * 24)
    counts = torch.bincount(held.y, minlength=5).tolist()
    assert counts[3] == 1  # at least one of every class with two or more samples
    assert counts[4] == 0  # the only sample of a class stays for training
    assert torch.bincount(rest.y, minlength=5).min() >= 1


def test_split_at_least_one_per_class_beats_the_total() -> None:
    rest, held = make_dataset([10] * 5).split(0.02, seed=0)  # round(0.02 * 50) = 1
    assert torch.bincount(held.y).tolist() == [1] * 5
    assert len(rest) == 45


def test_split_zero_fraction() -> None:
    ds = make_dataset([3, 3])
    rest, held = ds.split(0.0, seed=0)
    assert rest is ds
    assert len(held) == 0
    assert held.input_shape == ds.input_shape
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ds.split(1.0, seed=0)


# ------------------------------------------------------------------------- augmentation


def pattern(b: int = 64, c: int = 2, h: int = 5, w: int = 6) -> torch.Tensor:
    """Every value distinct and non-zero, so positions can be recovered."""
    return torch.arange(1, b * c * h * w + 1, dtype=torch.float32).reshape(b, c, h, w)


def test_augment_is_deterministic_and_keeps_shape() -> None:
    x = pattern()
    runs = [
        augment(x, crop_padding=2, flip=True, crop=True, generator=torch.Generator().manual_seed(s))
        for s in (3, 3, 4)
    ]
    assert runs[0].shape == x.shape
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert torch.equal(x, pattern())  # input untouched


def test_augment_flip_mirrors_about_half() -> None:
    x = pattern()
    out = augment(x, crop_padding=4, flip=True, crop=False, generator=torch.Generator())
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 10 < int(mirrored.sum()) < 54


def test_augment_crop_shifts_content_with_zero_padding() -> None:
    x, p = pattern(), 2
    out = augment(x, crop_padding=p, flip=False, crop=True, generator=torch.Generator())
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    h, w = x.shape[2:]
    shifts = []
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert len(found) == 1, f"sample {i} is not a crop of its padded self"
        shifts.append(found[0])
    assert len(set(shifts)) > 10  # offsets vary per sample
    assert (out == 0).any()  # some crops show the zero padding


def test_augment_without_options_is_identity() -> None:
    x = pattern(4)
    gen = torch.Generator()
    assert torch.equal(augment(x, crop_padding=4, flip=False, crop=False, generator=gen), x)
    assert torch.equal(augment(x, crop_padding=0, flip=False, crop=True, generator=gen), x)


# ------------------------------------------------------------------------------ batching


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_each_index_once(shuffle: bool) -> None:
    got = list(batches(10, 4, shuffle=shuffle, generator=torch.Generator().manual_seed(0)))
    assert [len(b) for b in got] == [4, 4, 2]
    assert all(b.dtype == torch.int64 for b in got)
    flat = torch.cat(got)
    assert sorted(flat.tolist()) == list(range(10))
    assert (flat.tolist() == list(range(10))) is not shuffle


def test_batches_shuffle_is_deterministic_per_seed() -> None:
    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat(list(batches(100, 32, shuffle=True, generator=gen))).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert list(batches(0, 8, shuffle=True)) == []
