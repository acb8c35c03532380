"""Remote commands: ``teachers``, ``datasets`` and ``jobs`` on a kdserve server, through
:class:`client.KDServeClient`.

Exit codes: 0 done; 1 the teacher/dataset turned out invalid or the job failed or was
canceled; 2 the request was refused (the server's problem detail is printed) or the server
could not be reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.engine import _read_json, print_report

if TYPE_CHECKING:
    from client import KDServeClient
    from client.client import UploadKind

err = Console(stderr=True, soft_wrap=True)  # one line per message, also in logs
out = Console()

teachers_app = typer.Typer(
    help="Teachers on a kdserve server: upload, promote a job's student, list, delete.",
    no_args_is_help=True,
)
datasets_app = typer.Typer(
    help="Datasets on a kdserve server: upload, list, delete.", no_args_is_help=True
)
jobs_app = typer.Typer(
    help="Distillation jobs on a kdserve server: submit, watch, download.", no_args_is_help=True
)


cache_app = typer.Typer(
    help="The teacher cache on a kdserve server: the entries your jobs share; list, delete.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(teachers_app, name="teachers")
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(cache_app, name="cache")


UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="KDSERVE_URL",
        help="The server's URL (default http://127.0.0.1:8000).",
        show_default=False,
    ),
]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="KDSERVE_API_KEY",
        help="API key (default: the file $KDSERVE_HOME/api-key that `kdserve up` writes).",
        show_default=False,
    ),
]
WaitOpt = Annotated[
    bool, typer.Option("--wait", help="Wait until the server has validated it (ready/invalid).")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="A name to recognise it by.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
IdArg = Annotated[str, typer.Argument(help="The id.", show_default=False)]
UploadIdArg = Annotated[str, typer.Argument(help="The id.", metavar="id", show_default=False)]


def make_client(url: str | None, api_key: str | None) -> KDServeClient:
    """The client the commands use (tests replace this to talk to an in-process API)."""
    from client import KDServeClient

    return KDServeClient(url, api_key)


# -- teachers ------------------------------------------------------------------------------


@teachers_app.command("upload")
def teachers_upload(
    file: Annotated[
        Path,
        typer.Argument(
            help="Teacher weights: .safetensors, state-dict .pt/.pth (or .pt2/TorchScript "
            "where the server allows code).",
            exists=True,
            dir_okay=False,
        ),
    ],
    input_shape: Annotated[
        str, typer.Option("--input-shape", help="One sample's shape, e.g. 3,32,32.")
    ],
    classes: Annotated[int, typer.Option("--classes", help="Number of classes.")],
    arch: Annotated[
        Path | None,
        typer.Option(
            "--arch",
            help="Architecture spec (JSON file); needed for weight-only formats.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    name: NameOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600.0,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Upload a teacher (streamed); prints it as JSON."""
    spec = _read_json(arch, "architecture") if arch else None
    _add_upload(
        "teacher",
        lambda kd: kd.upload_teacher(
            file, arch=spec, input_shape=input_shape, num_classes=classes, name=name
        ),
        wait=wait,
        timeout=timeout,
        url=url,
        api_key=api_key,
    )


@teachers_app.command("promote")
def teachers_promote(
    job_id: Annotated[str, typer.Argument(help="A succeeded job whose student becomes a teacher.")],
    name: Annotated[str | None, typer.Option("--name", help="The teacher's name.")] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600.0,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Make a succeeded job's student a teacher; prints it as JSON."""
    _add_upload(
        "teacher",
        lambda kd: kd.teacher_from_job(job_id, name=name),
        wait=wait,
        timeout=timeout,
        url=url,
        api_key=api_key,
    )


TEACHER_COLUMNS = ("id", "name", "status", "format", "input", "classes", "params", "size")


def _teacher_row(t: dict[str, Any]) -> list[str]:
    return [
        t["id"],
        escape(t["name"]),
        _status(t["status"]),
        t.get("format") or "-",
        _shape(t.get("input_shape")),
        str(t["num_classes"]),
        f"{t['params']:,}" if t.get("params") is not None else "-",
        _size(t["size"]),
    ]


# -- datasets ------------------------------------------------------------------------------


@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[
        Path,
        typer.Argument(
            help="A .npz (arrays x, y) or an image-folder archive (.zip, .tar, .tar.gz...).",
            exists=True,
            dir_okay=False,
        ),
    ],
    name: NameOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 600.0,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Upload a dataset (streamed); prints it as JSON."""
    _add_upload(
        "dataset",
        lambda kd: kd.upload_dataset(file, name=name),
        wait=wait,
        timeout=timeout,
        url=url,
        api_key=api_key,
    )


DATASET_COLUMNS = ("id", "name", "status", "samples", "input", "classes", "size")


def _dataset_row(d: dict[str, Any]) -> list[str]:
    return [
        d["id"],
        escape(d["name"]),
        _status(d["status"]),
        f"{d['samples']:,}" if d.get("samples") is not None else "-",
        _shape(d.get("input_shape")),
        str(len(d["classes"])) if d.get("classes") is not None else "-",
        _size(d["size"]),
    ]


# -- teachers and datasets alike -----------------------------------------------------------


def _upload_commands(
    app: typer.Typer,
    kind: UploadKind,
    *,
    columns: tuple[str, ...],
    row: Callable[[dict[str, Any]], list[str]],
    get_help: str,
) -> None:
    """``list``, ``get`` and ``delete`` of teachers or datasets; ``row`` is one line of the
    table ``list`` prints, under ``columns``."""
    what = kind[:-1]

    def list_(as_json: JsonOpt = False, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
        with _remote(url, api_key) as kd:
            items = kd.list_resources(kind)
        if as_json:
            _print_json(items)
            return
        table = _table(*columns)
        for item in items:
            table.add_row(*row(item))
        _print_table(table)

    def get(id_: UploadIdArg, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
        with _remote(url, api_key) as kd:
            _print_json(kd.get_resource(kind, id_))

    def delete(id_: UploadIdArg, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
        with _remote(url, api_key) as kd:
            kd.delete_upload(kind, id_)
        err.print(f"deleted {what} {escape(id_)}")

    app.command("list", help=f"List your {kind}, newest first.")(list_)
    app.command("get", help=get_help)(get)
    app.command("delete", help=f"Delete a {what} (jobs that used it keep their results).")(delete)


_upload_commands(
    teachers_app,
    "teachers",
    columns=TEACHER_COLUMNS,
    row=_teacher_row,
    get_help="One teacher as JSON (layers once validated).",
)
_upload_commands(
    datasets_app,
    "datasets",
    columns=DATASET_COLUMNS,
    row=_dataset_row,
    get_help="One dataset as JSON (samples, input shape and classes once validated).",
)


# -- teacher cache ---------------------------------------------------------------------------


@cache_app.command("list")
def cache_list(as_json: JsonOpt = False, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """List your teacher-cache entries, newest first."""
    with _remote(url, api_key) as kd:
        items = kd.list_cache_entries()
    if as_json:
        _print_json(items)
        return
    table = _table("id", "key", "size", "hits", "last used")
    for e in items:
        table.add_row(e["id"], e["key"][:16], _size(e["size"]), str(e["hits"]), e["last_used_at"])
    _print_table(table)


@cache_app.command("delete")
def cache_delete(
    id_: Annotated[
        str, typer.Argument(metavar="ID", help="The entry's id (`kdserve cache list`).")
    ],
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Delete a teacher-cache entry; the next job that needs it builds it again."""
    with _remote(url, api_key) as kd:
        kd.delete_cache_entry(id_)
    err.print(f"deleted cache entry {escape(id_)}")


# -- jobs ----------------------------------------------------------------------------------


@jobs_app.command("submit")
def jobs_submit(
    dataset: Annotated[str, typer.Option("--dataset", help="Training dataset id.")],
    student: Annotated[
        Path,
        typer.Option(
            "--student", help="Student architecture spec (JSON file).", exists=True, dir_okay=False
        ),
    ],
    config: Annotated[
        Path,
        typer.Option("--config", help="Training config (JSON file).", exists=True, dir_okay=False),
    ],
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher id (not for method scratch).")
    ] = None,
    val: Annotated[
        str | None,
        typer.Option("--val", help="Validation dataset id (default: the config's val_split)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for the job.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the job id.")] = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Submit a distillation job: prints it as JSON, then its id alone on the last line."""
    with _remote(url, api_key) as kd:
        job = kd.submit_job(
            dataset_id=dataset,
            student=_read_json(student, "student architecture"),
            config=_read_json(config, "config"),
            teacher_id=teacher,
            val_dataset_id=val,
            name=name,
        )
    if not quiet:
        _print_json(job)
        err.print(f"follow it with: kdserve jobs watch {job['id']}")
    print(job["id"])


@jobs_app.command("watch")
def jobs_watch(
    job_id: IdArg,
    interval: Annotated[
        float,
        typer.Option("--interval", help="Seconds before reopening a stream that ended early."),
    ] = 1.0,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Follow a job's events until it ends: exit 0 if it succeeded, 1 if it failed or was
    canceled."""
    with _remote(url, api_key) as kd:
        job = _watch(kd, job_id, interval)
    _finish(job)


@jobs_app.command("get")
def jobs_get(job_id: IdArg, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """One job as JSON: status, stage, epoch, progress, latest metrics, error."""
    with _remote(url, api_key) as kd:
        _print_json(kd.get_job(job_id))


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only queued, running, succeeded, failed or canceled."),
    ] = None,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """List your jobs, newest first."""
    with _remote(url, api_key) as kd:
        items = kd.list_jobs(status)
    if as_json:
        _print_json(items)
        return
    table = _table("id", "name", "status", "method", "stage", "progress", "created")
    for j in items:
        table.add_row(
            j["id"],
            escape(j["name"]),
            _status(j["status"]),
            j["method"],
            _stage(j),
            f"{j['progress']:.0%}",
            j["created_at"][:19].replace("T", " "),
        )
    _print_table(table)


@jobs_app.command("cancel")
def jobs_cancel(job_id: IdArg, url: UrlOpt = None, api_key: KeyOpt = None) -> None:
    """Cancel a job: a queued one at once, a running one within seconds."""
    with _remote(url, api_key) as kd:
        job = kd.cancel_job(job_id)
    _print_json(job)


@jobs_app.command("download")
def jobs_download(
    job_id: IdArg,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder to write to (default ./<job id>).")
    ] = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
) -> None:
    """Download every artifact of a job (student exports, report, metrics), then print the
    report."""
    folder = out_dir or Path(job_id)
    with _remote(url, api_key) as kd:
        paths = kd.download_all(job_id, folder)
    if not paths:
        err.print(f"job {escape(job_id)} has no artifacts yet")
        raise typer.Exit(1)
    for p in paths:
        err.print(f"  {p}  ({_size(p.stat().st_size)})")
    report = folder / "report.json"
    if report.is_file():
        print_report(json.loads(report.read_text()))
    err.print(f"wrote {len(paths)} files to {folder}/")


@jobs_app.command("report")
def jobs_report(
    job_id: IdArg, as_json: JsonOpt = False, url: UrlOpt = None, api_key: KeyOpt = None
) -> None:
    """A finished job's report: teacher vs student accuracy, size and latency."""
    with _remote(url, api_key) as kd:
        report = kd.job_report(job_id)
    if as_json:
        _print_json(report)
    else:
        print_report(report)


# -- helpers -------------------------------------------------------------------------------


@contextmanager
def _remote(url: str | None, api_key: str | None) -> Iterator[KDServeClient]:
    """A client; refusals and unreachable servers become one line and exit code 2."""
    from client import KDServeAPIError, KDServeClientError

    try:
        with make_client(url, api_key) as kd:
            yield kd
    except KDServeAPIError as exc:
        err.print(f"[red]error:[/] {escape(exc.detail)} [dim](HTTP {exc.status} {exc.code})[/]")
        if exc.status == 401:
            err.print(
                "pass --api-key or set KDSERVE_API_KEY (`kdserve up` saves one in "
                ".kdserve/api-key; `kdserve keys create` makes more)"
            )
        raise typer.Exit(2) from None
    except (KDServeClientError, ValueError, FileNotFoundError, TimeoutError) as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


def _add_upload(
    what: str,
    send: Callable[[KDServeClient], dict[str, Any]],
    *,
    wait: bool,
    timeout: float,
    url: str | None,
    api_key: str | None,
) -> None:
    """Send one upload (or promotion), wait for its validation if asked, print it."""
    with _remote(url, api_key) as kd:
        row = send(kd)
        if wait:
            row = _wait_valid(kd, what, row, timeout)
    _print_asset(row, what)


def _wait_valid(
    kd: KDServeClient, what: str, obj: dict[str, Any], timeout: float
) -> dict[str, Any]:
    err.print(f"waiting for {what} {obj['id']} to be validated...")
    return kd.wait_for(f"{what}s", obj["id"], timeout=timeout)


def _print_asset(obj: dict[str, Any], what: str) -> None:
    _print_json(obj)
    if obj["status"] == "invalid":
        err.print(f"[red]error:[/] {what} {obj['id']} is invalid: {escape(obj.get('error') or '')}")
        raise typer.Exit(1)


def _watch(kd: KDServeClient, job_id: str, interval: float) -> dict[str, Any]:
    """Follow the job's events until it is final: a live bar on a terminal, else a line per
    change; returns the job as it ended."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    job: dict[str, Any] = {}
    if not out.is_terminal:
        last = ""
        for job in _views(kd, job_id, interval):
            line = f"{_stage(job)} {job['progress']:.0%} {_metrics(job)}".strip()
            if line != last:
                print(line, flush=True)
                last = line
        return job
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=out,
    )
    with bar:
        task = bar.add_task(job_id[:8], total=1.0, info="")
        for job in _views(kd, job_id, interval):
            bar.update(
                task,
                completed=job["progress"],
                description=_stage(job),
                info=escape(_metrics(job)),
            )
    return job


def _views(kd: KDServeClient, job_id: str, interval: float) -> Iterator[dict[str, Any]]:
    """The job as each of its events leaves it (status, stage, epoch, progress, latest
    metrics), from its first event on, then as ``GET`` returns it once final (its metrics
    and error whole). A ``succeeded`` state is shown with the report that follows it."""
    view: dict[str, Any] = {"id": job_id, "status": "queued", "progress": 0.0, "metrics": {}}
    for event in kd.job_events(job_id, reconnect_wait=interval):
        data = event["data"]
        if event["kind"] == "state":
            view["status"] = event["status"]
            if event["status"] == "succeeded":
                continue  # its report follows, written in the same transaction
        elif event["kind"] == "epoch":
            view.update({k: data[k] for k in ("stage", "epoch", "progress") if k in data})
            view["metrics"] = {**view["metrics"], **data.get("metrics", {})}
        else:  # the report
            view["progress"] = 1.0
            view["metrics"] = {**view["metrics"], **data.get("metrics", {})}
        yield dict(view)
    yield kd.get_job(job_id)


def _finish(job: dict[str, Any]) -> None:
    if job["status"] == "succeeded":
        err.print(f"job {job['id']} succeeded: kdserve jobs download {job['id']}")
        return
    error = job.get("error") or {}
    reason = f"{error.get('code')}: {error.get('message')}" if error else "no error recorded"
    err.print(f"[red]job {job['id']} {job['status']}:[/] {escape(reason)}")
    raise typer.Exit(1)


def _stage(job: dict[str, Any]) -> str:
    if job["status"] != "running":
        return str(job["status"])
    parts = [job.get("stage") or "starting"]
    if job.get("epoch") is not None:
        parts.append(f"epoch {job['epoch']}")
    return " ".join(parts)


def _metrics(job: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}"
        for k, v in (job.get("metrics") or {}).items()
        if k != "lr" and isinstance(v, int | float) and not isinstance(v, bool)
    )


def _table(*columns: str) -> Table:
    table = Table()
    for column in columns:
        # Ids are what the next command needs: never cut or wrapped, whatever the width.
        keep = {"id": 36, "size": 8, "created": 19}.get(column)
        table.add_column(column, no_wrap=keep is not None, min_width=keep)
    return table


def _print_table(table: Table) -> None:
    # Piped output has no width to fit: keep rows whole for grep and awk, not 80 columns.
    (out if out.is_terminal else Console(width=200)).print(table)


def _status(status: str) -> str:
    color = {"ready": "green", "succeeded": "green", "invalid": "red", "failed": "red"}.get(status)
    return f"[{color}]{status}[/]" if color else status


def _shape(shape: list[int] | None) -> str:
    return "×".join(map(str, shape)) if shape else "-"


def _size(n: float) -> str:
    units = ("B", "KB", "MB", "GB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{int(n)} B" if i == 0 else f"{n:.1f} {units[i]}"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))
