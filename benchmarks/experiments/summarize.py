"""Summarize CLI job folders (their report.json) as a FitNets Table 5 style table.

Usage (from the repository root):
    .venv/bin/python -m benchmarks.experiments.summarize OUT --teacher teacher \\
        --rows "scratch=scratch-*" "kd=kd-*" [--gap scratch kd]

Each ``--rows LABEL=GLOB`` is one row: the reports of ``OUT/GLOB/report.json``, mean ± std
over them (the seeds). The teacher's row is ``OUT/TEACHER/report.json``'s model. With
``--gap BASE METHOD`` (default: the first two rows), the table is followed by the gain of
METHOD over BASE in points, whether it exceeds twice the larger std, and the fraction of the
BASE–teacher gap that METHOD closes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.experiments.runner import table


def _reports(root: Path, pattern: str) -> list[dict[str, Any]]:
    paths = sorted(root.glob(f"{pattern}/report.json"))
    if not paths:
        raise SystemExit(f"no {root}/{pattern}/report.json")
    return [json.loads(p.read_text()) for p in paths]


def gap_lines(
    base: list[dict[str, Any]], method: list[dict[str, Any]], teacher_acc: float, label: str
) -> list[str]:
    b = [r["student"]["accuracy"] for r in base]
    m = [r["student"]["accuracy"] for r in method]
    gain = 100 * (statistics.mean(m) - statistics.mean(b))
    spread = 100 * max(
        statistics.stdev(b) if len(b) > 1 else 0, statistics.stdev(m) if len(m) > 1 else 0
    )
    gap = teacher_acc - statistics.mean(b)
    closed = (statistics.mean(m) - statistics.mean(b)) / gap if gap > 0 else float("nan")
    return [
        f"{label}: {gain:+.2f} points over the first row (twice the larger std: "
        f"{2 * spread:.2f}; {'above' if gain > 2 * spread else 'not above'} it); "
        f"closes {100 * closed:.0f}% of its gap to the teacher ({100 * gap:.2f} points)"
    ]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("root", type=Path)
    ap.add_argument("--teacher", required=True, help="the teacher's folder under ROOT")
    ap.add_argument("--rows", nargs="+", required=True, metavar="LABEL=GLOB")
    args = ap.parse_args()

    teacher = json.loads((args.root / args.teacher / "report.json").read_text())
    rows = []
    for spec in args.rows:
        label, _, pattern = spec.partition("=")
        rows.append((label, _reports(args.root, pattern)))
    # The teacher's report is a scratch job: its model is under "student".
    print(table(rows, teacher))
    # The students' reports say what they were scored on (the teacher's may predate it).
    split = rows[0][1][0]["data"].get("eval_split", "validation")
    n = rows[0][1][0]["data"]["eval_samples"]
    print(f"\n(accuracy on {n} {split} images; seeds: {len(rows[0][1])} per row)")
    base = rows[0][1]
    for label, reports in rows[1:]:
        for line in gap_lines(base, reports, teacher["student"]["accuracy"], label):
            print(line)
    for label, reports in rows:
        errors = [round((1 - r["student"]["accuracy"]) * n) for r in reports]
        print(f"{label}: test errors {errors}")
    print(f"teacher: test errors {round((1 - teacher['student']['accuracy']) * n)}")


if __name__ == "__main__":
    main()
