"""Shared pieces of the experiment scripts: run one job, summarize reports as a table."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdcore.contract import DistillConfig, Spec
from kdcore.data import Dataset
from kdcore.pipeline import TeacherFile, run


def run_job(
    name: str,
    out_root: Path,
    *,
    spec: Spec,
    config: dict[str, Any],
    train: Dataset,
    test: Dataset,
    teacher: TeacherFile | None = None,
) -> dict[str, Any]:
    """Run (or reuse, when its report exists) one job; returns its report as a dict."""
    out = out_root / name
    report_path = out / "report.json"
    if report_path.exists():
        print(f"[{name}] reusing {report_path}", flush=True)
        return json.loads(report_path.read_text())
    t0 = time.perf_counter()
    last = [0.0]

    def on_progress(p: Any) -> None:
        if p.kind == "epoch":
            m = " ".join(f"{k}={v:.4f}" for k, v in p.metrics.items() if k != "lr")
            print(
                f"[{name}] {p.stage} {p.epoch}/{p.epochs} {m} {p.samples_per_s:.0f}/s "
                f"({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
        last[0] = p.fraction

    report = run(
        spec=spec,
        config=DistillConfig(**config),
        data=train,
        val=test,
        out_dir=out,
        teacher=teacher,
        on_progress=on_progress,
        formats=("safetensors",),
    )
    print(
        f"[{name}] done in {time.perf_counter() - t0:.0f}s: accuracy {report.student.accuracy:.4f}",
        flush=True,
    )
    return report.model_dump(mode="json")


def mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def table(rows: list[tuple[str, list[dict[str, Any]]]], teacher: dict[str, Any]) -> str:
    """A FitNets Table 5 style table: params, MACs, accuracy, speed-up, compression."""
    t = teacher["student"]
    lines = [
        "| model | method | params | MACs | test accuracy (%) | CPU latency b=1 (ms) "
        "| speed-up | compression |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| teacher | scratch | {t['params']:,} | {t['macs']:,} | {mean_std([t['accuracy']])} "
        f"| {t['latency_ms']:.3f} | 1.00 | 1.00 |",
    ]
    for label, reports in rows:
        s = reports[0]["student"]
        lat = statistics.median(r["student"]["latency_ms"] for r in reports)
        acc = mean_std([r["student"]["accuracy"] for r in reports])
        lines.append(
            f"| student | {label} | {s['params']:,} | {s['macs']:,} | {acc} | {lat:.3f} "
            f"| {t['latency_ms'] / lat:.2f} | {t['params'] / s['params']:.2f} |"
        )
    return "\n".join(lines)
