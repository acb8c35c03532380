"""Engine commands: ``train``, ``distill``, ``inspect``, ``evaluate``, ``schema``.

kdcore (and so torch) is imported inside each command, so ``kdserve --help`` stays fast.
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
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from kdcore.contract import DistillConfig, Spec
    from kdcore.train import Progress as TrainProgress

err = Console(stderr=True)
out = Console()

ArchOpt = Annotated[
    Path, typer.Option("--arch", help="Architecture spec (JSON file).", exists=True, dir_okay=False)
]
DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        help="Training data: .npz, image-folder archive (.zip/.tar/.tar.gz) or folder.",
        exists=True,
    ),
]
ValOpt = Annotated[
    Path | None,
    typer.Option(
        "--val",
        help="Validation data (default: hold out the config's val_split of --data).",
        exists=True,
    ),
]
TestOpt = Annotated[
    Path | None,
    typer.Option(
        "--test",
        help="Test data the report scores the models on (default: the validation data, "
        "which also chooses the exported epoch).",
        exists=True,
    ),
]
ConfigOpt = Annotated[
    Path, typer.Option("--config", help="Training config (JSON file).", exists=True, dir_okay=False)
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out", help="Output folder: exported student, report.json, metrics.jsonl, checkpoint."
    ),
]
FormatsOpt = Annotated[
    str,
    typer.Option("--formats", help="Comma-separated exports: safetensors,torchscript,pt2,onnx."),
]
FreshOpt = Annotated[
    bool,
    typer.Option(
        "--fresh", help="Ignore a checkpoint already in --out instead of resuming from it."
    ),
]


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command()(distill)
    app.command()(inspect)
    app.command()(evaluate)
    app.command()(schema)


def train(
    arch: ArchOpt,
    data: DataOpt,
    config: ConfigOpt,
    out: OutOpt,
    val: ValOpt = None,
    test: TestOpt = None,
    formats: FormatsOpt = "safetensors,torchscript,pt2,onnx",
    fresh: FreshOpt = False,
) -> None:
    """Train from labels alone (method "scratch"): the baseline, and how to make a teacher."""
    with _user_errors():
        cfg = _config(config)
        if cfg.uses_teacher:
            raise ValueError(f"method {cfg.method!r} needs a teacher: use `kdserve distill`")
        _run(
            student=arch,
            cfg=cfg,
            data=data,
            val=val,
            test=test,
            out=out,
            teacher=None,
            formats=formats,
            fresh=fresh,
        )


def distill(
    teacher: Annotated[
        Path,
        typer.Option(
            "--teacher",
            help="Teacher weights: .safetensors or a state-dict .pt/.pth "
            "(.pt2/TorchScript with --allow-code).",
            exists=True,
            dir_okay=False,
        ),
    ],
    student: Annotated[
        Path,
        typer.Option(
            "--student", help="Student architecture spec (JSON file).", exists=True, dir_okay=False
        ),
    ],
    data: DataOpt,
    config: ConfigOpt,
    out: OutOpt,
    val: ValOpt = None,
    test: TestOpt = None,
    teacher_arch: Annotated[
        Path | None,
        typer.Option(
            "--teacher-arch",
            help="Teacher architecture spec (needed for weight-only formats).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    allow_code: Annotated[
        bool,
        typer.Option(
            "--allow-code",
            help="Allow teacher files that contain code (torch.export .pt2, TorchScript). "
            "Only for files you trust.",
        ),
    ] = False,
    formats: FormatsOpt = "safetensors,torchscript,pt2,onnx",
    fresh: FreshOpt = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Teacher cache folder, shared by jobs: the teacher's outputs on each view "
            "are computed once, stored there, and read instead of running the teacher.",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Distill a student from a teacher by KD or FitNets (method "kd" or "fitnet")."""
    from kdcore.pipeline import TeacherFile

    with _user_errors():
        cfg = _config(config)
        if not cfg.uses_teacher:
            raise ValueError('method "scratch" uses no teacher: use `kdserve train`')
        t_spec = _arch(teacher_arch, "teacher architecture") if teacher_arch else None
        _run(
            student=student,
            cfg=cfg,
            data=data,
            val=val,
            test=test,
            out=out,
            teacher=TeacherFile(teacher, t_spec, allow_code),
            formats=formats,
            fresh=fresh,
            cache_dir=cache_dir,
        )


def inspect(
    arch: ArchOpt,
    input_shape: Annotated[
        str, typer.Option("--input-shape", help="One sample's shape, e.g. 3,32,32 or 784.")
    ],
    classes: Annotated[int, typer.Option("--classes", help="Number of classes.")] = 10,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights",
            help="Load and check these weights (.safetensors or state-dict .pt).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List every layer's dotted path, output shape, parameters and MACs."""
    with _user_errors():
        from kdcore.inspection import inspect_model
        from kdcore.models import build_model
        from kdcore.weights import load_model

        shape = _shape(input_shape)
        spec = _arch(arch, "architecture")
        model = (
            load_model(weights, spec, shape, classes)
            if weights
            else build_model(spec, shape, classes)
        )
        summary = inspect_model(model, shape)
    if as_json:
        out.print_json(summary.model_dump_json())
        return
    table = Table(
        "path", "type", "output shape", "params", "MACs", title=f"{spec.family} on input {shape}"
    )
    for layer in summary.layers:
        table.add_row(
            layer.path,
            layer.type,
            "×".join(map(str, layer.shape)),
            f"{layer.params:,}",
            f"{layer.macs:,}",
        )
    out.print(table)
    out.print(f"total: {summary.params:,} parameters, {summary.macs:,} MACs per sample")


def evaluate(
    model: Annotated[
        Path,
        typer.Option(
            "--model",
            help="A job's output folder (student.json + student.safetensors).",
            exists=True,
            file_okay=False,
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data", help="Data to score (.npz, image-folder archive or folder).", exists=True
        ),
    ],
) -> None:
    """Score an exported student on data; prints JSON with accuracy, top-5 and NLL."""
    with _user_errors():
        from kdcore.data import Normalizer, load_dataset
        from kdcore.evaluate import predict, score
        from kdcore.export import load_student

        student, meta = load_student(model)
        ds = load_dataset(data)
        if list(ds.input_shape) != list(meta.input_shape):
            raise ValueError(
                f"data samples have shape {ds.input_shape}, "
                f"the model takes {tuple(meta.input_shape)}"
            )
        result = score(predict(student, ds, Normalizer.from_dict(meta.preprocess)), ds.y)
    print(json.dumps(result.model_dump(exclude_none=True), indent=2))


def schema(
    what: Annotated[str, typer.Argument(help="arch or config")] = "arch",
) -> None:
    """Print the JSON Schema of architecture specs or training configs."""
    from kdcore.contract import DistillConfig, arch_json_schema

    if what not in ("arch", "config"):
        err.print("[red]error:[/] choose arch or config")
        raise typer.Exit(2)
    doc = arch_json_schema() if what == "arch" else DistillConfig.model_json_schema()
    print(json.dumps(doc, indent=2))


# -- helpers ---------------------------------------------------------------------------


@contextmanager
def _user_errors() -> Iterator[None]:
    """Problems with the user's input become one clear line and exit code 2, not a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} file {path} is not valid JSON: {exc}") from exc


def _config(path: Path) -> DistillConfig:
    from kdcore.contract import parse_config

    return parse_config(_read_json(path, "config"))


def _arch(path: Path, what: str) -> Spec:
    from kdcore.contract import parse_arch

    return parse_arch(_read_json(path, what))


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ValueError(f"--input-shape must be positive integers like 3,32,32, got {text!r}")
    return shape


def _run(
    *,
    student: Path,
    cfg: DistillConfig,
    data: Path,
    val: Path | None,
    test: Path | None,
    out: Path,
    teacher: Any,
    formats: str,
    fresh: bool,
    cache_dir: Path | None = None,
) -> None:
    from kdcore.cache import LocalFolderCache
    from kdcore.pipeline import run

    spec = _arch(student, "architecture")
    with _progress_bar() as on_progress:
        report = run(
            spec=spec,
            config=cfg,
            data=data,
            val=val,
            test=test,
            out_dir=out,
            teacher=teacher,
            on_progress=on_progress,
            resume=not fresh,
            formats=[f.strip() for f in formats.split(",") if f.strip()],
            teacher_cache=LocalFolderCache(cache_dir) if cache_dir is not None else None,
        )
    print_report(report.model_dump(mode="json"))
    for warning in report.warnings:
        err.print(f"warning: {escape(warning)}")
    cache = report.teacher_cache
    if cache.status != "off":
        err.print(
            f"teacher cache {cache.status}: {cache.key} ({cache.bytes / 1e6:.1f} MB"
            + (f", built in {cache.build_seconds:.1f} s)" if cache.status == "miss" else ")")
        )
    err.print(f"wrote {out}/: student.safetensors, student.json, report.json, metrics.jsonl")


@contextmanager
def _progress_bar() -> Iterator[Callable[[TrainProgress], None]]:
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
        disable=not err.is_terminal,
    )
    task = bar.add_task("training", total=1.0, info="")

    def on_progress(p: TrainProgress) -> None:
        parts = " ".join(f"{k}={v:.4g}" for k, v in p.metrics.items() if k != "lr")
        bar.update(
            task,
            completed=p.fraction,
            description=f"{p.stage} {p.epoch}/{p.epochs}",
            info=f"{parts} {p.samples_per_s:,.0f}/s",
        )
        if p.kind == "epoch" and not err.is_terminal:
            err.print(f"{p.stage} epoch {p.epoch}/{p.epochs}: {parts}")

    with bar:
        yield on_progress


def print_report(report: dict[str, Any]) -> None:
    """Teacher vs student, like FitNets Table 5."""
    table = Table(
        "",
        "accuracy",
        "params",
        "MACs",
        "size",
        "CPU latency (b=1)",
        title=f"report ({report['method']}, {report['data']['eval_samples']} "
        f"{report['data'].get('eval_split', 'validation')} samples)",
    )
    labels = {"teacher": "teacher", "baseline": "student alone", "student": "student"}
    for who, label in labels.items():
        r = report.get(who)
        if r:
            if not report.get("teacher"):
                label = "model"
            elif who == "student":
                label = f"student ({report['method']})"
            acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
            table.add_row(
                label,
                acc,
                f"{r['params']:,}",
                f"{r['macs']:,}",
                f"{r['size_bytes'] / 1e6:.2f} MB",
                f"{r['latency_ms']:.3f} ms",
            )
    out.print(table)
    if report.get("compression"):
        out.print(
            f"compression ×{report['compression']:.2f}, speed-up ×{report['speedup']:.2f}, "
            f"agreement {report['student']['agreement']:.4f}"
        )
    if report.get("gain_points") is not None:
        out.print(
            f"distillation bought {report['gain_points']:+.2f} points over the student "
            "trained alone"
        )
    exported = report.get("exported") or {}
    if exported.get("reason"):
        out.print(f"exported epoch {exported.get('epoch')}: {exported['reason']}")
    for field, choice in (report.get("choices") or {}).items():
        if field == "hint":
            out.print(
                f"hint auto: {choice['teacher_layer']} → {choice['student_layer']} "
                f"({choice['reason']})"
            )
        elif field == "kd":
            values = ", ".join(f"{k} {v:g}" for k, v in choice["value"].items())
            out.print(f"{' and '.join(choice['fields'])} auto: {values} ({choice['rule']})")
