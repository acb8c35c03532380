"""The teacher cache against the teacher run in the loop, and KD against training alone.

One run, two teacher/student pairs on CIFAR-10-shaped data (uint8 3×32×32, 10 classes) with
crop + flip augmentation, all through :func:`kdcore.train.train` on CPU:

- ``scratch``: the student alone (labels only), the speed KD should approach;
- ``in-loop``: KD with the teacher run on every batch (no cache);
- ``cold``: KD with an empty cache: build the entry (the teacher once per view, in inference
  mode, in large batches), then train from it;
- ``warm``: KD again on the same cache: the entry is read and verified, the teacher never runs.

Training speed is the median of ``samples_per_s`` over the epochs after the first (for the
warm/scratch ratio, over ``--rounds`` runs of each, alternating); times are whole ``train()``
calls (the build included for ``cold``). The targets of issue 9: warm KD
≥ 0.9× scratch samples/s; cold ≤ 1.1× in-loop time.

Usage: .venv/bin/python benchmarks/teacher_cache.py [--samples 4096] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.cache import CacheRequest, LocalFolderCache
from kdcore.contract import DistillConfig, Spec, parse_arch
from kdcore.data import Dataset
from kdcore.inspection import inspect_model
from kdcore.models import build_model
from kdcore.train import TrainResult, train
from kdcore.weights import freeze

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "examples/cifar10": (
        parse_arch((ROOT / "examples/cifar10/teacher.json").read_text()),
        parse_arch((ROOT / "examples/cifar10/student.json").read_text()),
    ),
    "resnet20 -> resnet8": (
        parse_arch({"family": "resnet", "depth": 20}),
        parse_arch({"family": "resnet", "depth": 8}),
    ),
}


def data(n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return Dataset(
        x=x, y=torch.randint(0, 10, (n,), generator=g), classes=[str(i) for i in range(10)]
    )


def macs(spec: Spec) -> int:
    return inspect_model(build_model(spec, (3, 32, 32), 10), (3, 32, 32)).macs


def timed(**kwargs: Any) -> tuple[TrainResult, float]:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = train(out_dir=Path(out), resume=False, **kwargs)
        return result, time.perf_counter() - t0


def rates(result: TrainResult) -> list[float]:
    """``samples_per_s`` of the epochs after the first (all of them for one epoch)."""
    rows = result.history[1:] or result.history
    return [row["samples_per_s"] for row in rows]


def speed(result: TrainResult) -> float:
    return statistics.median(rates(result))


def bench(
    name: str, teacher_spec: Spec, student_spec: Spec, ds: Dataset, epochs: int, rounds: int
) -> None:
    base: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": 128,
        "augment": "crop_flip",
        "device": "cpu",
        "val_split": 0.0,
        "seed": 0,
    }
    torch.manual_seed(1)
    teacher: nn.Module = freeze(build_model(teacher_spec, ds.input_shape, ds.num_classes))
    scratch, t_scratch = timed(
        spec=student_spec, config=DistillConfig(method="scratch", **base), train_data=ds
    )
    kd = DistillConfig(method="kd", **base)
    in_loop, t_loop = timed(spec=student_spec, config=kd, train_data=ds, teacher=teacher)
    with tempfile.TemporaryDirectory() as cache_dir:
        request = CacheRequest(LocalFolderCache(Path(cache_dir)), teacher_sha256="0" * 64)
        cold, t_cold = timed(
            spec=student_spec, config=kd, train_data=ds, teacher=teacher, teacher_cache=request
        )
        warm, t_warm = timed(
            spec=student_spec, config=kd, train_data=ds, teacher=teacher, teacher_cache=request
        )
        # The ratio that matters most, measured against drift in machine speed (which moved
        # single runs here by ±10%): more scratch and warm runs, alternating which goes first;
        # the medians are over every epoch after the first of every run of each kind.
        scratch_rates, warm_rates = rates(scratch), rates(warm)
        for r in range(rounds - 1):
            order = ("warm", "scratch") if r % 2 == 0 else ("scratch", "warm")
            for kind in order:
                if kind == "scratch":
                    again, _ = timed(
                        spec=student_spec,
                        config=DistillConfig(method="scratch", **base),
                        train_data=ds,
                    )
                    scratch_rates += rates(again)
                else:
                    again, _ = timed(
                        spec=student_spec,
                        config=kd,
                        train_data=ds,
                        teacher=teacher,
                        teacher_cache=request,
                    )
                    warm_rates += rates(again)
    ratio = macs(teacher_spec) / macs(student_spec)
    rt = warm.runtime
    print(
        f"\n{name}: teacher/student MACs {ratio:.2f}x, {len(ds)} samples, {epochs} epochs, "
        f"{rt.precision}, {rt.memory_format} (the defaults' resolution)"
    )
    print(f"  {'run':<9} {'samples/s':>10} {'seconds':>8}")
    for run, result, seconds in (
        ("scratch", scratch, t_scratch),
        ("in-loop", in_loop, t_loop),
        ("cold", cold, t_cold),
        ("warm", warm, t_warm),
    ):
        print(f"  {run:<9} {speed(result):>10.0f} {seconds:>8.1f}")
    s_med, w_med = statistics.median(scratch_rates), statistics.median(warm_rates)
    print(
        f"  over {rounds} scratch and {rounds} warm runs: scratch {s_med:.0f}, warm {w_med:.0f} "
        "samples/s"
    )
    print(f"  warm KD / scratch samples/s: {w_med / s_med:.3f}  (target >= 0.9)")
    print(f"  cold job / in-loop job time: {t_cold / t_loop:.3f}  (target <= 1.1)")
    print(f"  warm job / in-loop job time: {t_warm / t_loop:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="scratch and warm runs each")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ds = data(args.samples)
    for name, (teacher, student) in PAIRS.items():
        bench(name, teacher, student, ds, args.epochs, args.rounds)


if __name__ == "__main__":
    main()
