"""Tests for kdcore.data.normalizer: fitting, applying and storing the input preprocessing."""

from __future__ import annotations

import pytest
import torch

from kdcore.data import DataError, Dataset, Normalizer
from tests.kdcore.data.factories import make_dataset


def test_normalizer_images_standardizes_each_channel() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 5, 5), generator=gen, dtype=torch.uint8)
    x[:, 1] //= 4  # a channel with a different mean and spread
    ds = Dataset(x, torch.arange(40) % 2, ["a", "b"])
    norm = Normalizer.fit(ds)
    assert norm.scale == pytest.approx(1 / 255)
    assert len(norm.mean) == 3
    expected_mean = (x.double() / 255).mean(dim=(0, 2, 3))
    expected_std = (x.double() / 255).std(dim=(0, 2, 3), unbiased=False)
    assert norm.mean == pytest.approx(expected_mean.tolist(), rel=1e-9)
    assert norm.std == pytest.approx(expected_std.tolist(), rel=1e-9)
    out = norm(x)
    assert out.dtype == torch.float32
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (out.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-5
    manual = ((x.double() / 255) - expected_mean.view(1, 3, 1, 1)) / expected_std.view(1, 3, 1, 1)
    torch.testing.assert_close(out, manual.float(), rtol=1e-5, atol=1e-5)


def test_normalizer_fit_in_chunks_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (30, 3, 4, 4), generator=gen, dtype=torch.uint8)
    ds = Dataset(x, torch.arange(30) % 2, ["a", "b"])
    whole = Normalizer.fit(ds)
    monkeypatch.setattr("kdcore.data.normalizer._FIT_CHUNK_ELEMENTS", 100)  # 2 samples per chunk
    chunked = Normalizer.fit(ds)
    assert chunked.mean == pytest.approx(whole.mean, rel=1e-12)
    assert chunked.std == pytest.approx(whole.std, rel=1e-12)


def test_normalizer_vectors_single_value_and_far_from_zero() -> None:
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0)) * 3 + 1e4
    norm = Normalizer.fit(Dataset(x.contiguous(), torch.arange(100) % 2, ["a", "b"]))
    assert norm.scale == 1.0
    assert len(norm.mean) == len(norm.std) == 1
    out = norm(x)
    assert abs(out.mean().item()) < 1e-3
    assert out.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)


def test_normalizer_constant_data_and_roundtrip() -> None:
    x = torch.full((4, 1, 2, 2), 7, dtype=torch.uint8)
    ds = Dataset(x, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    norm = Normalizer.fit(ds)
    assert norm.std == [1e-6]
    assert torch.isfinite(norm(ds.x)).all()
    again = Normalizer.from_dict(norm.to_dict())
    assert again == norm
    with pytest.raises(ValueError, match="normalizer needs"):
        Normalizer.from_dict({"scale": 1.0, "mean": [0.0]})


def test_normalizer_does_not_modify_input_and_checks_channels() -> None:
    norm = Normalizer(scale=1.0, mean=[1.0, 2.0], std=[2.0, 4.0])
    x = torch.ones(2, 2, 3, 3)
    out = norm(x)
    assert torch.equal(x, torch.ones(2, 2, 3, 3))
    assert out[:, 0].eq(0).all()
    assert out[:, 1].eq(-0.25).all()
    with pytest.raises(ValueError, match="2-channel images"):
        norm(torch.ones(2, 3, 3, 3))


def test_normalizer_empty_dataset() -> None:
    with pytest.raises(DataError, match="empty"):
        Normalizer.fit(make_dataset([2, 2]).subset(torch.empty(0, dtype=torch.int64)))


def test_normalizer_stats_broadcast_over_one_sample() -> None:
    images = Normalizer(scale=1 / 255, mean=[0.5, 0.4, 0.3], std=[0.2])
    mean, std = images.stats((3, 8, 8))
    assert mean.shape == (3, 1, 1)
    assert std.shape == ()
    assert mean.dtype == std.dtype == torch.float32
    vectors = Normalizer(scale=1.0, mean=[1.0, 2.0, 3.0], std=[1.0, 2.0, 4.0])
    assert [t.shape for t in vectors.stats((3,))] == [(3,), (3,)]
    with pytest.raises(ValueError, match=r"mean needs 1 value or 4 \(one per channel"):
        images.stats((4, 8, 8))


def test_normalizer_applies_per_feature_values_to_vectors() -> None:
    norm = Normalizer(scale=2.0, mean=[1.0, 2.0, 3.0], std=[1.0, 2.0, 4.0])
    out = norm(torch.ones(2, 3, dtype=torch.float64))
    assert out.dtype == torch.float32
    assert out.tolist() == [[1.0, 0.0, -0.25]] * 2
    with pytest.raises(ValueError, match="3-channel images"):
        norm(torch.ones(2, 4))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scale": 1.0, "mean": [0.0], "std": [0.0]}, "std must be non-zero"),
        ({"scale": 0.0, "mean": [0.0], "std": [1.0]}, "finite non-zero"),
        ({"scale": 1.0, "mean": [float("nan")], "std": [1.0]}, "mean must be finite"),
        ({"scale": 1.0, "mean": [0.0, 1.0], "std": [1.0, 2.0, 3.0]}, "got 2 and 3"),
        ({"scale": 1.0, "mean": [], "std": [1.0]}, "got 0 and 1"),
        ({"scale": 1.0, "mean": [0.0], "std": [1.0], "shift": 2}, "unknown normalizer keys"),
    ],
)
def test_normalizer_refuses_bad_values(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Normalizer.from_dict(values)
