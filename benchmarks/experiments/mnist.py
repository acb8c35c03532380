"""MNIST, Hinton et al.'s setup scaled down: a 2×1200 teacher, a 2×800 student, scratch vs KD.

Only the 10,000-image MNIST test set is available here, so it is split (stratified, fixed
seed) into 7,000 train / 1,000 validation / 2,000 test. The KD temperature is chosen on the
validation split; the table reports the test split, mean ± std over the seeds.

Usage (from the repository root):
    .venv/bin/python -m benchmarks.experiments.mnist --out runs/mnist [--seeds 0 1 2]
    .venv/bin/python -m benchmarks.experiments.mnist --write-npz DIR
        (the same split as files for the CLI: DIR/mnist-train.npz, the 8,000 training and
        validation images, and DIR/mnist-test.npz, the 2,000 test images;
        benchmarks/experiments/mnist_defaults.sh uses them)
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.experiments.runner import run_job, table
from kdcore.contract import parse_arch
from kdcore.data import Dataset
from kdcore.pipeline import TeacherFile

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "mnist"
TEACHER = parse_arch({"family": "mlp", "hidden": [1200, 1200], "dropout": 0.2})
STUDENT = parse_arch({"family": "mlp", "hidden": [800, 800]})


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (magic 0x0803 images / 0x0801 labels), as in LeCun's MNIST distribution."""
    raw = gzip.decompress(path.read_bytes())
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def splits() -> tuple[Dataset, Dataset, Dataset]:
    rest, test = _full().split(0.2, seed=1234)
    train, val = rest.split(1 / 8, seed=1234)
    return train, val, test


def write_npz(folder: Path) -> None:
    """The split as ``.npz`` files the CLI reads: training (+ validation) and test."""
    full = _full()
    rest, test = full.split(0.2, seed=1234)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("mnist-train", rest), ("mnist-test", test)):
        np.savez(folder / f"{name}.npz", x=part.x.numpy(), y=part.y.numpy())
        print(f"{folder / name}.npz: {len(part)} images")


def _full() -> Dataset:
    x = torch.from_numpy(read_idx(DATA / "t10k-images-idx3-ubyte.gz").copy())[:, None]
    y = torch.from_numpy(read_idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    return Dataset(x=x.contiguous(), y=y, classes=[str(c) for c in range(10)])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "mnist")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[2, 4, 8, 20])
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--write-npz", type=Path, help="write the split as .npz files and stop")
    args = ap.parse_args()
    if args.write_npz is not None:
        write_npz(args.write_npz)
        return

    train, val, test = splits()
    print(f"train {len(train)}, validation {len(val)}, test {len(test)}", flush=True)
    common = {
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0,
        "schedule": "cosine",
        "val_split": 0,
        "epochs": args.epochs,
    }
    teacher_report = run_job(
        "teacher",
        args.out,
        spec=TEACHER,
        train=train,
        test=test,
        config={**common, "method": "scratch", "seed": 0, "weight_decay": 5e-4},
    )
    teacher = TeacherFile(args.out / "teacher" / "student.safetensors", TEACHER)

    # Pick T on the validation split (seed 0), as one would without peeking at the test set.
    sweep = {
        t: run_job(
            f"val-kd-T{t:g}",
            args.out,
            spec=STUDENT,
            train=train,
            test=val,
            teacher=teacher,
            config={**common, "method": "kd", "seed": 0, "temperature": t, "alpha": args.alpha},
        )
        for t in args.temperatures
    }
    best_t = max(sweep, key=lambda t: sweep[t]["student"]["accuracy"])
    print(
        "validation accuracy by T:",
        json.dumps({f"{t:g}": r["student"]["accuracy"] for t, r in sweep.items()}),
    )
    print(f"chosen T = {best_t:g}")

    rows = [
        (
            "scratch",
            [
                run_job(
                    f"scratch-seed{s}",
                    args.out,
                    spec=STUDENT,
                    train=train,
                    test=test,
                    config={**common, "method": "scratch", "seed": s},
                )
                for s in args.seeds
            ],
        ),
        (
            f"kd (T={best_t:g})",
            [
                run_job(
                    f"kd-seed{s}",
                    args.out,
                    spec=STUDENT,
                    train=train,
                    test=test,
                    teacher=teacher,
                    config={
                        **common,
                        "method": "kd",
                        "seed": s,
                        "temperature": best_t,
                        "alpha": args.alpha,
                    },
                )
                for s in args.seeds
            ],
        ),
    ]
    print()
    print(table(rows, teacher_report))


if __name__ == "__main__":
    main()
