"""CIFAR-10: a teacher from scratch, then a thinner, deeper student by scratch, KD and FitNets.

Usage (from the repository root):
    .venv/bin/python -m benchmarks.experiments.cifar10 --out runs/cifar10 [--seeds 0 1 2]

Reads ../shared/data/cifar10/{cifar10-train.tar.gz,cifar10-test.zip}; reports on the test set.
Finished jobs are reused, so an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.experiments.runner import run_job, table
from kdcore.contract import parse_arch
from kdcore.data import Dataset, load_dataset
from kdcore.pipeline import TeacherFile

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
EXAMPLES = ROOT / "examples" / "cifar10"


def load(path: Path, cache: Path) -> Dataset:
    """Decode the JPEG archive once; later runs read the tensors from a cache file."""
    if cache.exists():
        d = torch.load(cache, weights_only=True)
        return Dataset(x=d["x"], y=d["y"], classes=list(d["classes"]))
    t0 = time.perf_counter()
    ds = load_dataset(path)
    print(f"decoded {path.name}: {len(ds)} images in {time.perf_counter() - t0:.1f}s", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": ds.x, "y": ds.y, "classes": ds.classes}, cache)
    return ds


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "cifar10")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student-epochs", type=int, default=8)
    ap.add_argument("--hint-epochs", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--hint-lr", type=float, default=None, help="default: kdcore's")
    ap.add_argument("--teacher-augment", default="crop_flip")
    ap.add_argument(
        "--student-augment",
        default="none",
        help="none lets kdcore compute the teacher's logits once per stage",
    )
    ap.add_argument("--only", choices=["teacher", "scratch", "kd", "fitnet"], nargs="+")
    ap.add_argument("--student", type=Path, default=EXAMPLES / "student.json")
    ap.add_argument("--hint-layer", default="c2_relu", help="teacher layer (the hint)")
    ap.add_argument("--guided-layer", default="c2b_relu", help="student layer (guided)")
    ap.add_argument("--prefix", default="", help="prefix of the run folders (variants)")
    ap.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="train students on this many images (stratified); the teacher keeps "
        "all 50,000 (a transfer set smaller than the teacher's data)",
    )
    args = ap.parse_args()

    train = load(DATA / "cifar10-train.tar.gz", args.out / "cache" / "train.pt")
    test = load(DATA / "cifar10-test.zip", args.out / "cache" / "test.pt")
    teacher_spec = parse_arch((EXAMPLES / "teacher.json").read_text())
    student_spec = parse_arch(args.student.read_text())
    common = {
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "val_split": 0,
    }
    wanted = set(args.only or ["teacher", "scratch", "kd", "fitnet"])

    teacher_report = run_job(
        "teacher",
        args.out,
        spec=teacher_spec,
        train=train,
        test=test,
        config={
            **common,
            "method": "scratch",
            "epochs": args.teacher_epochs,
            "seed": 0,
            "augment": args.teacher_augment,
        },
    )
    teacher = TeacherFile(args.out / "teacher" / "student.safetensors", teacher_spec)
    student_train = train
    if args.train_subset:
        _, student_train = train.split(args.train_subset / len(train), seed=1234)
    kd = {"temperature": args.temperature, "alpha": args.alpha}
    hint = {
        "teacher_layer": args.hint_layer,
        "student_layer": args.guided_layer,
        "epochs": args.hint_epochs,
    }
    if args.hint_lr is not None:
        hint["lr"] = args.hint_lr
    methods = {
        "scratch": {"method": "scratch"},
        "kd": {"method": "kd", **kd},
        "fitnet": {"method": "fitnet", **kd, "hint": hint},
    }
    rows = []
    for method, extra in methods.items():
        if method not in wanted:
            continue
        reports = [
            run_job(
                f"{args.prefix}{method}-seed{seed}",
                args.out,
                spec=student_spec,
                train=student_train,
                test=test,
                teacher=None if method == "scratch" else teacher,
                config={
                    **common,
                    **extra,
                    "epochs": args.student_epochs,
                    "seed": seed,
                    "augment": args.student_augment,
                },
            )
            for seed in args.seeds
        ]
        rows.append((method, reports))
    print()
    print(table(rows, teacher_report))


if __name__ == "__main__":
    main()
