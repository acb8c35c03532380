"""Re-measure CPU latency and throughput of exported models, on an otherwise idle machine.

The reports' speed figures are taken at the end of each training job, possibly while other
jobs train on the same cores; this measures the exported models again, one after another.

Usage: .venv/bin/python -m benchmarks.experiments.latency runs/cifar10/teacher runs/cifar10/kd-seed0
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from kdcore.evaluate import measure_speed
from kdcore.export import load_student
from kdcore.inspection import inspect_model


def main(dirs: list[Path]) -> None:
    print(
        f"torch {torch.__version__}; latency: batch 1, 1 thread, median of 200 runs; "
        f"throughput: batch 256, {torch.get_num_threads()} threads"
    )
    print("| model | params | MACs | latency (ms) | throughput (samples/s) |")
    print("|---|---:|---:|---:|---:|")
    for d in dirs:
        model, meta = load_student(d)
        shape = tuple(meta.input_shape)
        summary = inspect_model(model, shape)
        speed = measure_speed(model, shape, runs=200, warmup=20, min_seconds=1.0)
        print(
            f"| {d.name} | {summary.params:,} | {summary.macs:,} | {speed.latency_ms:.3f} | "
            f"{speed.throughput:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])
