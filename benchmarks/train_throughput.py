"""Training throughput of kdcore's KD and FitNet (hint) steps against a minimal hand-written
PyTorch loop over the same models and data, in the same process.

Both sides do the same work per step: index a batch of uint8 images held as one tensor,
normalize, flip at random, run the teacher without autograd, run the student, take the
loss, step SGD and the cosine schedule. Both run in the precision and memory format that
kdcore's defaults (``precision``/``memory_format`` ``"auto"``) resolve to on this machine
(printed; bf16 autocast and channels-last on a CPU with AVX-512 BF16): the hand loop is
given the same, so the comparison is of the loops, not of their settings. kdcore adds what
a service needs (progress and cancel callbacks, finite-loss checks, loss bookkeeping,
per-epoch checkpoints written outside the timed steps) and one thing a minimal loop does
not do: it folds the frozen teacher's BatchNorm into its convolutions (kdcore/fold.py), for
the KD stage's logits and for hints read from a layer the folded teacher still computes
(``c2_relu`` here). The figure is samples/s over the steps of each epoch after the first
(warm-up); the ratio is kdcore / hand-written (target ≥ 1.0).

Usage: .venv/bin/python benchmarks/train_throughput.py [--samples 6144] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.contract import DistillConfig, parse_arch
from kdcore.data import Dataset, Normalizer, batches
from kdcore.losses import hint_loss
from kdcore.models import build_model
from kdcore.regressor import build_regressor
from kdcore.runtime import Runtime, resolve_runtime
from kdcore.train import Progress, train
from kdcore.weights import freeze

ROOT = Path(__file__).resolve().parents[1]
TEACHER = parse_arch((ROOT / "examples/cifar10/teacher.json").read_text())
STUDENT = parse_arch((ROOT / "examples/cifar10/student.json").read_text())
HINT, GUIDED = "c2_relu", "c2b_relu"
BATCH, LR, T, ALPHA = 128, 0.05, 4.0, 0.1
HINT_LR = LR / (16 * 16)  # kdcore's default for this 16×16 hint (see docs/design.md)


def data(n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    return Dataset(
        x=x, y=torch.randint(0, 10, (n,), generator=g), classes=[str(i) for i in range(10)]
    )


def prefix(model: nn.Sequential, path: str) -> nn.Sequential:
    """The layers of a Sequential up to and including ``path``: the hand-written truncation."""
    names = [n for n, _ in model.named_children()]
    return nn.Sequential(*list(model.children())[: names.index(path) + 1])


def hand_written(
    method: str, ds: Dataset, teacher: nn.Module, epochs: int, rt: Runtime
) -> list[float]:
    torch.manual_seed(0)
    student = build_model(STUDENT, ds.input_shape, ds.num_classes)
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    student = student.to(memory_format=fmt)  # type: ignore[call-overload]
    teacher = teacher.to(memory_format=fmt)  # type: ignore[call-overload]
    norm = Normalizer.fit(ds)
    mean = torch.tensor(norm.mean).view(1, -1, 1, 1)
    std = torch.tensor(norm.std).view(1, -1, 1, 1)
    if method == "hint":
        assert isinstance(student, nn.Sequential)
        assert isinstance(teacher, nn.Sequential)
        s_part, t_part = prefix(student, GUIDED), prefix(teacher, HINT)
        with torch.no_grad():
            probe = (ds.x[:2].float() / 255 - mean) / std
            reg = build_regressor(tuple(s_part(probe).shape[1:]), tuple(t_part(probe).shape[1:]))
            reg = reg.to(memory_format=fmt)  # type: ignore[call-overload]
        params = list(s_part.parameters()) + list(reg.parameters())
    else:
        params = list(student.parameters())
    lr = HINT_LR if method == "hint" else LR
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = epochs * -(-len(ds) // BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    rates = []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(epoch)
        t0, seen = time.perf_counter(), 0
        for idx in batches(len(ds), BATCH, shuffle=True, generator=g):
            x = (ds.x[idx].float() / 255 - mean) / std
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x = x.contiguous(memory_format=fmt)
            y = ds.y[idx]
            with rt.autocast():
                if method == "hint":
                    with torch.no_grad():
                        target = t_part(x)
                    loss = hint_loss(target, reg(s_part(x)))
                else:
                    with torch.no_grad():
                        t_logits = teacher(x).float()
                    s_logits = student(x).float()
                    loss = ALPHA * F.cross_entropy(s_logits, y) + (1 - ALPHA) * T * T * F.kl_div(
                        F.log_softmax(s_logits / T, 1),
                        F.log_softmax(t_logits / T, 1),
                        reduction="batchmean",
                        log_target=True,
                    )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def with_kdcore(method: str, ds: Dataset, teacher: nn.Module, epochs: int) -> list[float]:
    cfg: dict[str, object] = {
        "method": "kd",
        "epochs": epochs,
        "batch_size": BATCH,
        "lr": LR,
        "temperature": T,
        "alpha": ALPHA,
        "augment": "flip",
        "val_split": 0,
        "device": "cpu",
    }
    if method == "hint":
        # Stage 2 runs one short epoch; only the hint stage's epochs are timed.
        cfg |= {
            "method": "fitnet",
            "epochs": 1,
            "hint": {
                "teacher_layer": HINT,
                "student_layer": GUIDED,
                "epochs": epochs,
                "lr": HINT_LR,
            },
        }
    rates: list[float] = []

    def on_progress(p: Progress) -> None:
        if p.kind == "epoch" and p.stage == ("hint" if method == "hint" else "kd"):
            rates.append(p.samples_per_s)

    with tempfile.TemporaryDirectory() as out:
        train(
            spec=STUDENT,
            config=DistillConfig(**cfg),
            train_data=ds,
            teacher=teacher,
            out_dir=Path(out),
            on_progress=on_progress,
            progress_every=10**9,
        )
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--samples", type=int, default=6144)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4, help="alternate the two loops this often")
    ap.add_argument("--methods", nargs="+", default=["kd", "hint"], choices=["kd", "hint"])
    args = ap.parse_args()
    ds = data(args.samples)
    torch.manual_seed(1)
    teacher = freeze(build_model(TEACHER, ds.input_shape, ds.num_classes))
    rt = resolve_runtime(DistillConfig(method="kd", device="cpu"), images=True)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.samples} samples "
        f"of 3×32×32, batch {BATCH}, {args.epochs} epochs (first is warm-up), "
        f"{args.rounds} alternating rounds; both loops in {rt.precision}, {rt.memory_format}",
        flush=True,
    )
    for method in args.methods:
        ours: list[float] = []
        theirs: list[float] = []
        for r in range(args.rounds):
            # Alternate which loop goes first, so drift in machine speed hits both sides.
            if r % 2 == 0:
                theirs += hand_written(method, ds, teacher, args.epochs, rt)[1:]
            ours += with_kdcore(method, ds, teacher, args.epochs)[1:]
            if r % 2 == 1:
                theirs += hand_written(method, ds, teacher, args.epochs, rt)[1:]
        a, b = statistics.median(ours), statistics.median(theirs)
        print(
            f"{method:>5} per epoch: kdcore {' '.join(f'{r:.0f}' for r in ours)}; "
            f"hand-written {' '.join(f'{r:.0f}' for r in theirs)}",
            flush=True,
        )
        print(
            f"{method:>5} step: kdcore {a:8.1f} samples/s   hand-written {b:8.1f} samples/s   "
            f"ratio {a / b:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
