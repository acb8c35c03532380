"""What channels-last, bf16 autocast and BatchNorm folding give on this machine, side by side.

Training steps (forward, cross-entropy, backward, SGD step; batch 128, CIFAR-sized inputs or
MNIST-sized vectors) of the models kdcore trains, in four settings: fp32 contiguous (the
baseline), fp32 channels-last, bf16 autocast contiguous, bf16 autocast channels-last. Then
a frozen teacher's inference (the KD stage's and the cache build's cost) in the precision and
layout ``"auto"`` resolves to here, with its BatchNorm as is and folded (kdcore/fold.py).
Each figure is the median samples/s of ``--rounds`` timed blocks, the settings interleaved
in every round so that drift in machine speed hits all of them; ratios are to the baseline.

Usage: .venv/bin/python benchmarks/precision.py [--rounds 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.contract import DistillConfig, Spec, parse_arch
from kdcore.fold import fold_batchnorm
from kdcore.models import build_model
from kdcore.runtime import in_memory_format, native_bf16, resolve_runtime
from kdcore.weights import freeze

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
IMAGES = {
    "wrn-16-2 (the CIFAR-10 proof's teacher)": parse_arch(
        {"family": "wrn", "depth": 16, "width": 2}
    ),
    "resnet20": parse_arch({"family": "resnet", "depth": 20}),
    "resnet8": parse_arch({"family": "resnet", "depth": 8}),
    "cifar10 example student": parse_arch((ROOT / "examples/cifar10/student.json").read_text()),
}
VECTORS = {"mlp 784-800-800-10": parse_arch({"family": "mlp", "hidden": [800, 800]})}
SETTINGS = {  # name: (channels_last, bf16)
    "fp32": (False, False),
    "fp32 channels-last": (True, False),
    "bf16": (False, True),
    "bf16 channels-last": (True, True),
}


def _autocast(bf16: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_step(spec: Spec, shape: tuple[int, ...], cl: bool, bf16: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_model(spec, shape, 10)
    x = torch.randn(BATCH, *shape)
    y = torch.randint(0, 10, (BATCH,))
    if cl:
        model = in_memory_format(model, "channels_last")
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        with _autocast(bf16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def infer_step(model: nn.Module, x: torch.Tensor, bf16: bool) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), _autocast(bf16):
            model(x)

    return step


def race(steps: dict[str, Callable[[], None]], rounds: int, n: int) -> dict[str, float]:
    """Median samples/s of each step function, interleaved over ``rounds``."""
    for step in steps.values():  # warm-up
        for _ in range(3):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            rates[name].append(n * BATCH / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def show(title: str, rates: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    for name, rate in rates.items():
        print(f"  {name:<28} {rate:8.0f} samples/s   {rate / rates[baseline]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    cpu = torch.device("cpu")
    rt = resolve_runtime(DistillConfig(method="kd", device="cpu"), images=True)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16(cpu)}; "
        f'"auto" resolves to {rt.precision}, {rt.memory_format} for images'
    )
    for name, spec in IMAGES.items():
        steps = {s: train_step(spec, (3, 32, 32), cl, bf) for s, (cl, bf) in SETTINGS.items()}
        show(f"training step, {name}", race(steps, args.rounds, args.steps), "fp32")
    for name, spec in VECTORS.items():
        steps = {
            s: train_step(spec, (784,), False, bf)
            for s, (_, bf) in SETTINGS.items()
            if "-" not in s
        }
        show(f"training step, {name}", race(steps, args.rounds, args.steps), "fp32")
    bf16 = rt.precision == "bf16"
    for name in ("resnet20", "cifar10 example student"):
        spec = (
            IMAGES[name]
            if name == "resnet20"
            else parse_arch((ROOT / "examples/cifar10/teacher.json").read_text())
        )
        label = name if name == "resnet20" else "cifar10 example teacher"
        teacher = freeze(build_model(spec, (3, 32, 32), 10))
        x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        plain = rt.model(teacher)
        folded = rt.model(fold_batchnorm(teacher))
        steps = {
            "as is": infer_step(plain, x, bf16),
            "BatchNorm folded": infer_step(folded, x, bf16),
        }
        show(
            f"teacher inference, {label} ({rt.precision}, {rt.memory_format})",
            race(steps, args.rounds, args.steps),
            "as is",
        )


if __name__ == "__main__":
    main()
