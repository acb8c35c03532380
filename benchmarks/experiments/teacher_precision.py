"""A trained teacher's logits in bf16 autocast against fp32: what the teacher cache stores when
``precision`` resolves to bf16.

Runs the teacher (BatchNorm folded, as kdcore runs it for logits) over a test set in fp32
contiguous and in bf16 channels-last, and prints the logits' difference, the agreement of
the two predictions, both accuracies, and the KL divergence between the two sets of soft
targets at T = 1 and T = 4 (what KD would train towards).

Usage: .venv/bin/python -m benchmarks.experiments.teacher_precision RUN_DIR TRAIN TEST
  e.g. /work/runs/prec/r20-teacher ../shared/data/cifar10/cifar10-train.tar.gz
       ../shared/data/cifar10/cifar10-test.zip
(RUN_DIR: a `kdserve train` output folder; TRAIN: the data its normalizer was fitted on.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from kdcore.data import Normalizer, load_dataset
from kdcore.export import load_student
from kdcore.fold import fold_batchnorm
from kdcore.runtime import Runtime
from kdcore.weights import freeze

RUNTIMES = {
    "fp32": Runtime(torch.device("cpu"), "fp32", "contiguous"),
    "bf16": Runtime(torch.device("cpu"), "bf16", "channels_last"),
}


def main(run_dir: Path, train: Path, test: Path) -> None:
    teacher, _ = load_student(run_dir)
    normalizer = Normalizer.fit(load_dataset(train))
    data = load_dataset(test)
    logits = {}
    for name, rt in RUNTIMES.items():
        model = rt.model(fold_batchnorm(freeze(teacher)))
        parts = []
        with torch.inference_mode():
            for i in range(0, len(data), 500):
                with rt.autocast():
                    parts.append(model(rt.batch(normalizer(data.x[i : i + 500]))).float())
        logits[name] = torch.cat(parts)
    a, b = logits["fp32"], logits["bf16"]
    diff = (a - b).abs()
    print(
        f"logits: |fp32| up to {a.abs().max():.2f}; |bf16 − fp32| max {diff.max():.4f}, "
        f"mean {diff.mean():.4f}"
    )
    print(
        f"same prediction: {(a.argmax(1) == b.argmax(1)).float().mean():.4f}; accuracy fp32 "
        f"{(a.argmax(1) == data.y).float().mean():.4f}, bf16 "
        f"{(b.argmax(1) == data.y).float().mean():.4f}"
    )
    for t in (1.0, 4.0):
        kl = F.kl_div(
            F.log_softmax(b / t, 1), F.log_softmax(a / t, 1), reduction="batchmean", log_target=True
        )
        print(f"T = {t:g}: KL(fp32 targets ‖ bf16 targets) = {kl:.2e}")


if __name__ == "__main__":
    main(*(Path(p) for p in sys.argv[1:4]))
