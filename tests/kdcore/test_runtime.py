"""The runtime a config resolves to (device, precision, memory format), and what a run
does with it."""

import json
from pathlib import Path

import pytest
import torch

from kdcore import runtime as runtime_module
from kdcore.contract import DistillConfig, parse_arch
from kdcore.data import Dataset
from kdcore.pipeline import REPORT_NAME, run
from kdcore.runtime import resolve_runtime
from kdcore.train import train
from tests.kdcore.factories import cnn, config, image_data


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_a_cpu_is_bf16_only_with_native_bf16(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: str
) -> None:
    monkeypatch.setattr(runtime_module, "native_bf16", lambda device: native)
    rt = resolve_runtime(DistillConfig(**config()), images=True)
    assert rt.precision == expected
    assert rt.device == torch.device("cpu")


def test_explicit_choices_are_kept_and_auto_layout_follows_the_input() -> None:
    cfg = DistillConfig(**config(precision="fp32", memory_format="contiguous"))
    rt = resolve_runtime(cfg, images=True)
    assert (rt.precision, rt.memory_format) == ("fp32", "contiguous")
    auto = DistillConfig(**config())
    assert resolve_runtime(auto, images=True).memory_format == "channels_last"
    assert resolve_runtime(auto, images=False).memory_format == "contiguous"


def test_channels_last_batches_only_for_images() -> None:
    rt = resolve_runtime(DistillConfig(**config(memory_format="channels_last")), images=True)
    image = rt.batch(torch.zeros(2, 3, 4, 4))
    assert image.is_contiguous(memory_format=torch.channels_last)
    assert not image.is_contiguous()
    vector = torch.zeros(2, 5)
    assert rt.batch(vector) is vector


def test_report_records_the_resolved_runtime(tmp_path: Path) -> None:
    expected = resolve_runtime(DistillConfig(**config()), images=True)
    run(
        spec=cnn(4),
        config=DistillConfig(**config(epochs=1)),
        data=image_data(),
        out_dir=tmp_path,
        formats=("safetensors",),
    )
    saved = json.loads((tmp_path / REPORT_NAME).read_text())
    assert saved["config"]["precision"] == "auto"  # what was asked, as asked
    assert saved["precision"] == expected.precision
    assert saved["memory_format"] == "channels_last"
    assert saved["device"] == "cpu"


def test_a_channels_last_run_returns_contiguous_weights(tmp_path: Path) -> None:
    result = train(
        spec=cnn(4),
        config=DistillConfig(**config(epochs=1, memory_format="channels_last")),
        train_data=image_data(),
        out_dir=tmp_path,
    )
    assert result.runtime.memory_format == "channels_last"
    assert all(p.is_contiguous() for p in result.student.state_dict().values())


def test_layout_does_not_change_what_is_learned(tmp_path: Path) -> None:
    """Channels-last is a layout, not a different computation: fp32 weights agree."""
    weights = {}
    for fmt in ("contiguous", "channels_last"):
        result = train(
            spec=cnn(4),
            config=DistillConfig(**config(epochs=1, precision="fp32", memory_format=fmt)),
            train_data=image_data(),
            out_dir=tmp_path / fmt,
        )
        weights[fmt] = result.student.state_dict()
    for name, value in weights["contiguous"].items():
        torch.testing.assert_close(weights["channels_last"][name], value, rtol=1e-4, atol=1e-5)


def test_vector_data_runs_contiguous(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    data = Dataset(x=torch.randn(64, 6, generator=g), y=torch.arange(64) % 2, classes=["a", "b"])
    result = train(
        spec=parse_arch({"family": "mlp", "hidden": [8]}),
        config=DistillConfig(**config(epochs=1)),
        train_data=data,
        out_dir=tmp_path,
    )
    assert result.runtime.memory_format == "contiguous"
