"""``kdserve sweeps``: hyper-parameter sweeps on a kdserve server (submit, watch, download,
list, get, cancel), through :class:`client.KDServeClient`.

Exit codes as the other remote commands (:mod:`cli.remote`): 0 done; 1 the sweep failed or
was canceled (no point succeeded); 2 the request was refused or the server unreachable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.engine import _read_json, print_report
from cli.remote import (
    IdArg,
    JsonOpt,
    KeyOpt,
    UrlOpt,
    _print_json,
    _print_table,
    _remote,
    _size,
    _status,
    _table,
    err,
    out,
)

if TYPE_CHECKING:
    from client import KDServeClient

sweeps_app = typer.Typer(
    help="Hyper-parameter sweeps on a kdserve server: one job per point of a grid; submit, "
    "watch the leaderboard, download the best student.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(sweeps_app, name="sweeps")


@sweeps_app.command("submit")
def sweeps_submit(
    dataset: Annotated[str, typer.Option("--dataset", "--data", help="Training dataset id.")],
    student: Annotated[
        Path,
        typer.Option(
            "--student", help="Student architecture spec (JSON file).", exists=True, dir_okay=False
        ),
    ],
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            help="The base training config (JSON file) every point starts from.",
            exists=True,
            dir_okay=False,
        ),
    ],
    grid: Annotated[
        Path,
        typer.Option(
            "--grid",
            help='The grid (JSON file), e.g. {"temperature": [2, 4], "alpha": [0.1, 0.5]}; '
            "fields: temperature, alpha, lr, hint, hint_epochs, seed.",
            exists=True,
            dir_okay=False,
        ),
    ],
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher id (not for method scratch).")
    ] = None,
    val: Annotated[
        str | None,
        typer.Option("--val", help="Validation dataset id (default: the config's val_split)."),
    ] = None,
    metric: Annotated[
        str,
        typer.Option("--metric", help="What ranks the points: val_accuracy or val_nll."),
    ] = "val_accuracy",
    scratch: Annotated[
        bool,
        typer.Option(
            "--scratch", help="Add a scratch point (no teacher) per seed: what distillation bought."
        ),
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="A name for the sweep.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the sweep id.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Submit a sweep: prints its points, then its id alone on the last line."""
    with _remote(url, api_key) as kd:
        sweep = kd.submit_sweep(
            dataset_id=dataset,
            student=_read_json(student, "student architecture"),
            config=_read_json(config, "config"),
            grid=_read_json(grid, "grid"),
            teacher_id=teacher,
            val_dataset_id=val,
            metric=metric,
            scratch=scratch,
            name=name,
        )
    if not quiet:
        table = _table("#", "job", "overrides", "status")
        for p in sweep["points"]:
            table.add_row(str(p["index"]), p["job_id"], escape(_overrides(p)), _status(p["status"]))
        _print_table(table)
        err.print(f"follow it with: kdserve sweeps watch {sweep['id']}")
    print(sweep["id"])


@sweeps_app.command("watch")
def sweeps_watch(
    sweep_id: IdArg,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between polls.")] = 2.0,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Follow a sweep until every point is final, then print its leaderboard: exit 0 if a
    point succeeded, 1 if the sweep failed or was canceled."""
    with _remote(url, api_key) as kd:
        sweep = _watch(kd, sweep_id, interval)
    _print_table(leaderboard(sweep))
    for p in sweep["points"]:
        if p["status"] in ("failed", "canceled"):
            error = p.get("error") or {}
            reason = f": {error.get('code')}: {error.get('message')}" if error else ""
            err.print(f"point {p['index']} ({escape(_overrides(p))}) {p['status']}{escape(reason)}")
    if sweep["status"] != "succeeded":
        err.print(f"[red]sweep {sweep['id']} {sweep['status']}:[/] no point succeeded")
        raise typer.Exit(1)
    err.print(f"best: job {sweep['best_job_id']}; kdserve sweeps download {sweep['id']}")


@sweeps_app.command("download")
def sweeps_download(
    sweep_id: IdArg,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder to write to (default ./<sweep id>).")
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Download the best point's artifacts (student exports, report, metrics), then print its
    report."""
    folder = out_dir or Path(sweep_id)
    with _remote(url, api_key) as kd:
        sweep = kd.get_sweep(sweep_id)
        paths = kd.download_sweep(sweep_id, folder)
    best = next((p for p in sweep["leaderboard"] if p["job_id"] == sweep["best_job_id"]), None)
    if best is not None:
        err.print(f"best point {best['index']} ({escape(_overrides(best))}): job {best['job_id']}")
    if sweep["status"] not in ("succeeded", "failed", "canceled"):
        err.print(f"the sweep is still {sweep['status']}: this is the best point so far")
    for p in paths:
        err.print(f"  {p}  ({_size(p.stat().st_size)})")
    report = folder / "report.json"
    if report.is_file():
        print_report(json.loads(report.read_text()))
    err.print(f"wrote {len(paths)} files to {folder}/")


@sweeps_app.command("list")
def sweeps_list(as_json: JsonOpt = False, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List your sweeps, newest first."""
    with _remote(url, api_key) as kd:
        items = kd.list_sweeps()
    if as_json:
        _print_json(items)
        return
    table = _table("id", "name", "status", "points", "done", "best", "created")
    for s in items:
        top = s["leaderboard"][0] if s["leaderboard"] else None
        finished = sum(
            n for k, n in s["counts"].items() if k in ("succeeded", "failed", "canceled")
        )
        table.add_row(
            s["id"],
            escape(s["name"]),
            _status(s["status"]),
            str(len(s["points"])),
            str(finished),
            f"{s['metric']}={_number(top[s['metric']])}" if top else "-",
            s["created_at"][:19].replace("T", " "),
        )
    _print_table(table)


@sweeps_app.command("get")
def sweeps_get(sweep_id: IdArg, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """One sweep as JSON: points, leaderboard, best job, counts."""
    with _remote(url, api_key) as kd:
        _print_json(kd.get_sweep(sweep_id))


@sweeps_app.command("cancel")
def sweeps_cancel(sweep_id: IdArg, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Cancel every point not yet final: queued ones at once, running ones within seconds."""
    with _remote(url, api_key) as kd:
        sweep = kd.cancel_sweep(sweep_id)
    _print_json(sweep)
    err.print(f"sweep {sweep['id']}: {_counts(sweep)}")


def leaderboard(sweep: dict[str, Any]) -> Table:
    """The succeeded points, best first by the sweep's metric."""
    table = Table(title=f"sweep {sweep['id']} ({sweep['status']}), by {sweep['metric']}")
    for column in ("rank", "point", "job", "overrides", "val_accuracy", "val_nll", "epoch"):
        table.add_column(column, no_wrap=column == "job", min_width=36 if column == "job" else None)
    for rank, p in enumerate(sweep["leaderboard"], start=1):
        table.add_row(
            str(rank),
            str(p["index"]),
            p["job_id"],
            escape(_overrides(p)),
            _number(p["val_accuracy"]),
            _number(p["val_nll"]),
            str(p["best_epoch"]) if p["best_epoch"] is not None else "-",
        )
    return table


def _watch(kd: KDServeClient, sweep_id: str, interval: float) -> dict[str, Any]:
    """Poll until the sweep is final: a live leaderboard on a terminal, else a line per
    change."""
    from rich.live import Live

    from client import FINAL_JOB_STATES

    if not out.is_terminal:
        last = ""
        while True:
            sweep = kd.get_sweep(sweep_id)
            line = _progress_line(sweep)
            if line != last:
                print(line, flush=True)
                last = line
            if sweep["status"] in FINAL_JOB_STATES:
                return sweep
            time.sleep(interval)
    with Live(console=out, auto_refresh=False) as live:
        while True:
            sweep = kd.get_sweep(sweep_id)
            live.update(leaderboard(sweep), refresh=True)
            if sweep["status"] in FINAL_JOB_STATES:
                live.update("", refresh=True)  # the final table is printed once, after
                return sweep
            time.sleep(interval)


def _progress_line(sweep: dict[str, Any]) -> str:
    top = sweep["leaderboard"][0] if sweep["leaderboard"] else None
    best = (
        f"; best {top['job_id']} {sweep['metric']}={_number(top[sweep['metric']])}" if top else ""
    )
    return f"{sweep['status']}: {_counts(sweep)}{best}"


def _counts(sweep: dict[str, Any]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sweep["counts"].items() if n)


def _overrides(point: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in point["overrides"].items()
    )


def _number(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"
