"""What the job sandbox costs: the wall time of one upload check (a small dataset) run in a
plain child process and in the bubblewrap sandbox, against the same check in-process.

Every job and every upload check pays this once; it is mostly the child importing torch.

Usage: .venv/bin/python benchmarks/sandbox_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kdcore.data import load_dataset
from worker.sandbox import available_isolation, run_in_sandbox
from worker.sandbox.launcher import Isolation
from worker.sandbox.protocol import DatasetRequest, Limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        box = Path(tmp) / "box"
        box.mkdir()
        rng = np.random.default_rng(0)
        x = rng.normal(size=(256, 1, 8, 8)).astype("float32")
        np.savez(box / "data.npz", x=x, y=np.arange(256) % 10)
        request = DatasetRequest(
            limits=Limits(memory_mb=0, file_mb=0, threads=1), path="data.npz", max_members=10
        )

        def in_process() -> None:
            load_dataset(box / "data.npz")

        def sandboxed(isolation: Isolation) -> None:
            run_in_sandbox(
                request, box, isolation=isolation, time_limit_s=120, log_path=Path(tmp) / "log"
            )

        modes: dict[str, Callable[[], None]] = {
            "in-process": in_process,
            "process": lambda: sandboxed("process"),
        }
        if available_isolation() == "bwrap":
            modes["bwrap"] = lambda: sandboxed("bwrap")
        print(f"{args.runs} runs each; one upload check of a 256-sample .npz dataset")
        print(f"{'mode':<12} {'median s':>9} {'min s':>7} {'max s':>7}")
        for name, fn in modes.items():
            fn()  # warm-up: file caches
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            print(
                f"{name:<12} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}"
            )


if __name__ == "__main__":
    main()
