"""Service commands: ``db upgrade``, ``keys``, ``api``, ``worker`` and ``up``.

``up`` is the embedded single-machine mode: SQLite database and broker and local storage
under ``KDSERVE_HOME``, an API and one worker as child processes, nothing else to install.
The database, uvicorn and Celery are imported inside the commands, so ``kdserve --help``
stays fast.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cli.engine import _user_errors

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from store.settings import Settings

err = Console(stderr=True, soft_wrap=True)  # one line per message, also in logs
out = Console()

ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"
WORKER_APP = "worker.app:celery"
KEY_FILE = "api-key"
_MIGRATION_LOCK = 0x6B64_7365_7276_65  # "kdserve": any constant, the same in every process

db_app = typer.Typer(help="The database: migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of tenants.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
    app.add_typer(keys_app, name="keys")
    app.command()(api)
    app.command()(worker)
    app.command()(up)


class DatabaseUnavailable(RuntimeError):
    pass


# -- db ------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the database to accept.")
    ] = 60.0,
) -> None:
    """Wait for the database (KDSERVE_DATABASE_URL), then migrate it to the newest schema."""
    with _service_errors():
        from store.settings import Settings

        revision = upgrade_database(Settings().db_url, timeout=timeout)
    err.print(f"database is at revision {revision}")


def upgrade_database(
    url: str, *, timeout: float = 60.0, say: Callable[[str], None] | None = None
) -> str | None:
    """Wait until ``url`` accepts connections, then run Alembic ``upgrade head`` on it.

    Idempotent. Returns the revision the database is at afterwards.
    """
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from store.db import make_engine

    say = say or (lambda msg: err.print(escape(msg)))
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if not ALEMBIC_INI.is_file():
        raise FileNotFoundError(
            f"{ALEMBIC_INI} not found: migrations ship with the source tree (pip install -e .)"
        )
    engine = make_engine(url, pool_size=1)
    try:
        _wait_for_database(engine, _shown(url), timeout, say)
        cfg = Config(str(ALEMBIC_INI))
        # Alembic's documented recipe for a shared connection: migrations/env.py uses it.
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # API replicas starting together migrate one at a time; the rest find it done.
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            revision = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return revision


def _wait_for_database(
    engine: Engine, shown: str, timeout: float, say: Callable[[str], None]
) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"database {shown} did not accept connections within {timeout:g} s: {reason}"
                ) from exc
            delay = min(delay, left)
            say(f"waiting for database {shown} ({reason}); retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


# -- keys ----------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    tenant: Annotated[
        str, typer.Option("--tenant", help="Tenant name; created if it does not exist.")
    ],
    name: Annotated[str, typer.Option("--name", help="A label to recognise the key by.")] = "",
) -> None:
    """Create an API key for a tenant. Only the key goes to stdout; it is shown once."""
    with _service_errors():
        if not tenant.strip() or len(tenant) > 100:
            raise ValueError("--tenant must be 1 to 100 characters")
        key = _create_key(tenant.strip(), name)
    print(key)
    err.print(
        f"created a key for tenant {escape(tenant)!r}; it is shown only this once. "
        "Use it as KDSERVE_API_KEY or `Authorization: Bearer <key>`."
    )


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[
        str | None,
        typer.Argument(help="The whole key (kds_<prefix>_<secret>); a wrong secret matches none."),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option(
            "--prefix",
            help="Revoke by the key's 12-character prefix alone (kds_<prefix>_...), for a key "
            "whose secret is lost.",
        ),
    ] = None,
) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    with _service_errors():
        from store.db import make_engine, make_sessionmaker, transaction
        from store.keys import split_prefix
        from store.repositories.tenants import TenantRepository
        from store.settings import Settings

        if (key is None) == (prefix is None):
            raise ValueError("give the whole key, or --prefix PREFIX (not both)")
        if key is not None and split_prefix(key.strip()) is None:
            raise ValueError(
                "that is not a whole key (kds_<prefix>_<secret>); to revoke by the prefix "
                "alone, say so: kdserve keys revoke --prefix PREFIX"
            )
        engine = make_engine(Settings().db_url, pool_size=1)
        try:
            with transaction(make_sessionmaker(engine)) as session:
                repo = TenantRepository(session)
                if key is not None:
                    revoked = repo.revoke_key(key.strip())
                else:
                    revoked = repo.revoke_prefix((prefix or "").strip())
        finally:
            engine.dispose()
        if not revoked:
            raise ValueError(
                "no active key matches that key"
                if key is not None
                else "no active key has that prefix"
            )
    err.print("revoked")


def _create_key(tenant: str, label: str, *, settings: Settings | None = None) -> str:
    from store.db import make_engine, make_sessionmaker, transaction
    from store.repositories.tenants import TenantRepository
    from store.settings import Settings

    engine = make_engine((settings or Settings()).db_url, pool_size=1)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            repo = TenantRepository(session)
            return repo.create_key(repo.get_or_create(tenant), name=label)
    finally:
        engine.dispose()


# -- api and worker ------------------------------------------------------------------------


def api(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind (default KDSERVE_API_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port to bind (default KDSERVE_API_PORT).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="uvicorn processes.")] = 1,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve the REST API with uvicorn (run `kdserve db upgrade` first)."""
    with _service_errors():
        import uvicorn

        from api.metrics.procdir import multiprocess_dir
        from store.settings import Settings

        settings = Settings()
        # GET /metrics sums the request counts of every uvicorn process from the files of a
        # fresh folder (prometheus-client's multiprocess mode), set before the app is imported.
        with multiprocess_dir():
            uvicorn.run(
                "api.app:create_app",
                factory=True,
                host=host or settings.api_host,
                port=port or settings.api_port,
                workers=workers,
                log_level=log_level,
                # Longer than clients keep idle connections (kdserve's client: 2 s), so the
                # server is not the side that closes a connection a client is about to reuse.
                timeout_keep_alive=30,
            )


def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            "--queues",
            "-Q",
            help="Comma-separated queues (default KDSERVE_QUEUE,KDSERVE_DEFAULT_QUEUE).",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Tasks at once (1 per GPU).")
    ] = 1,
    max_tasks_per_child: Annotated[
        int,
        typer.Option(
            "--max-tasks-per-child",
            min=1,
            help="Replace a pool process after this many tasks (frees GPU memory).",
        ),
    ] = 1,
    beat: Annotated[
        bool,
        typer.Option(
            "--beat/--no-beat",
            help="Also run the scheduler that reaps stalled jobs. Exactly one worker of a "
            "deployment should.",
        ),
    ] = False,
    pool: Annotated[str, typer.Option("--pool", "-P", help="Celery pool.")] = "prefork",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO",
) -> None:
    """Run a Celery worker for distillation jobs and validations (replaces this process)."""
    with _service_errors():
        from store.settings import Settings

        settings = Settings()
        _check_worker_installed()
        argv = worker_argv(
            settings,
            queues=queues,
            concurrency=concurrency,
            max_tasks_per_child=max_tasks_per_child,
            beat=beat,
            pool=pool,
            loglevel=loglevel,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child: SIGTERM from the container runtime reaches Celery's warm shutdown.
    os.execvp(argv[0], argv)


def worker_argv(
    settings: Settings,
    *,
    queues: str | None = None,
    concurrency: int = 1,
    max_tasks_per_child: int = 1,
    beat: bool = False,
    pool: str = "prefork",
    loglevel: str = "INFO",
) -> list[str]:
    """The ``python -m celery ... worker`` command line for these options."""
    default = f"{settings.queue},{settings.default_queue}"
    qs = ",".join(q.strip() for q in (queues or default).split(",") if q)
    argv = [sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", "-Q", qs]
    argv += ["-c", str(concurrency), "-P", pool, "-l", loglevel]
    argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
    if beat:
        home = settings.resolved_home
        home.mkdir(parents=True, exist_ok=True)
        # Beat's schedule file would otherwise land in the current directory.
        argv += ["-B", "-s", str(home / "celerybeat-schedule")]
    return argv


def _check_worker_installed() -> None:
    import importlib.util

    module = WORKER_APP.split(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        raise ValueError(f"{module} is not installed: the worker needs kdserve's worker package")


# -- up ------------------------------------------------------------------------------------


def up(
    port: Annotated[
        int | None, typer.Option("--port", help="API port (default KDSERVE_API_PORT).")
    ] = None,
    stop_timeout: Annotated[
        float,
        typer.Option(
            "--stop-timeout",
            help="On shutdown, seconds to let the worker finish before it is killed (a killed "
            "job is requeued and resumes from its checkpoint).",
        ),
    ] = 30.0,
) -> None:
    """Run kdserve on this machine: database, API and one worker, with nothing to install.

    Everything lives under KDSERVE_HOME (default ./.kdserve). Ctrl-C stops it.
    """
    with _service_errors():
        from store.settings import Settings

        settings = Settings()
        home = settings.resolved_home
        home.mkdir(parents=True, exist_ok=True)
        port = port or settings.api_port
        host = settings.api_host
        _check_port_free(host, port)
        _check_worker_installed()
        revision = upgrade_database(settings.db_url, timeout=60)
        err.print(f"database at revision {revision} ({escape(_shown(settings.db_url))})")
        key, key_file = _first_key(settings)

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    env = {
        **os.environ,
        "KDSERVE_HOME": str(home),
        "KDSERVE_API_HOST": host,
        "KDSERVE_API_PORT": str(port),
    }
    # The API refuses jobs that ask for a GPU this machine's worker does not have.
    env.setdefault("KDSERVE_CUDA_WORKERS", str(cuda_available()).lower())
    api_argv = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory"]
    api_argv += ["--timeout-keep-alive", "30"]  # as `kdserve api`: outlast the client's 2 s
    commands = {
        "api": [*api_argv, "--host", host, "--port", str(port)],
        "worker": worker_argv(settings, concurrency=1, max_tasks_per_child=1, beat=True),
    }
    code = _supervise(
        commands,
        env=env,
        health_url=f"{url}/healthz",
        stop_timeout=stop_timeout,
        on_ready=lambda: _print_ready(url, key, key_file),
    )
    raise typer.Exit(code)


def cuda_available(timeout: float = 120.0) -> bool:
    """Whether torch sees a CUDA device here, asked in a child process (this one stays
    torch-free); True when the child cannot tell, so that nothing is refused by mistake."""
    probe = "import torch; print(torch.cuda.is_available())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired):
        return True
    return done.stdout.strip() != "False"


def _first_key(settings: Settings) -> tuple[str | None, Path]:
    """On first start (no key exists) create tenant "default" and a key, saved 0600."""
    from store.db import make_engine, make_sessionmaker, transaction
    from store.repositories.tenants import TenantRepository

    key_file = settings.resolved_home / KEY_FILE
    engine = make_engine(settings.db_url, pool_size=1)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            repo = TenantRepository(session)
            if repo.has_keys():
                return None, key_file
            key = repo.create_key(repo.get_or_create("default"), name="kdserve up")
            # Written inside the transaction: a key that could not be saved is never created.
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
            os.chmod(key_file, 0o600)  # O_CREAT's mode does not apply to an existing file
            return key, key_file
    finally:
        engine.dispose()


def _print_ready(url: str, key: str | None, key_file: Path) -> None:
    out.print(f"\nkdserve is up at [bold]{url}[/]  (API docs: {url}/docs)")
    if key is not None:
        out.print(f"your API key (shown once, saved to {key_file}):\n  {key}")
    elif key_file.is_file():
        out.print(f"API key: in {key_file}")
    else:
        out.print(
            "API keys exist already but none is saved here; make one with "
            "`kdserve keys create --tenant default`"
        )
    out.print(
        "use it from another shell:\n"
        f"  export KDSERVE_URL={url}\n"
        f"  export KDSERVE_API_KEY=$(cat {key_file})\n"
        "  kdserve datasets upload train.npz --wait\n"
        "Ctrl-C stops the API and the worker."
    )


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another with --port"
            ) from None


def _supervise(
    commands: dict[str, list[str]],
    *,
    env: dict[str, str],
    health_url: str,
    stop_timeout: float,
    on_ready: Callable[[], None],
    ready_timeout: float = 60.0,
) -> int:
    """Start the children, report when the API answers, stop them all on SIGINT/SIGTERM or
    when one dies. Returns the exit code: 0 after a signal, 1 when a child died."""
    import httpx

    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, argv in commands.items():
            # Own process groups: Ctrl-C reaches only us, and we stop the children in order.
            procs[name] = subprocess.Popen(argv, env=env, start_new_session=True)
        ready_by = time.monotonic() + ready_timeout
        ready = False
        while not stop.wait(0.5):
            dead = next((n for n, p in procs.items() if p.poll() is not None), None)
            if dead is not None:
                err.print(
                    f"[red]error:[/] the {dead} process exited with code "
                    f"{procs[dead].returncode}; stopping"
                )
                return 1
            if not ready:
                try:
                    ready = httpx.get(health_url, timeout=2).status_code == 200
                except httpx.HTTPError:
                    ready = False
                if ready:
                    on_ready()
                elif time.monotonic() > ready_by:
                    err.print(f"[red]error:[/] the API did not answer {health_url} in time")
                    return 1
        err.print("stopping...")
        return 0
    finally:
        _stop_all(procs, timeout=stop_timeout)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _stop_all(procs: dict[str, subprocess.Popen[bytes]], *, timeout: float) -> None:
    """SIGTERM each child, wait up to ``timeout``, then SIGKILL its whole process group (a
    Celery pool process included)."""
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for name, p in procs.items():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            err.print(f"the {name} process did not stop in {timeout:g} s; killing it")
        try:
            os.killpg(p.pid, signal.SIGKILL)  # leftovers of the group, or the child itself
        except (ProcessLookupError, PermissionError):
            pass
        p.wait()


# -- helpers -------------------------------------------------------------------------------


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def _service_errors() -> Iterator[None]:
    """User errors exit 2 (via ``_user_errors``); an unreachable or unmigrated database
    exits 1 with one line instead of a traceback."""
    from sqlalchemy.exc import DBAPIError

    try:
        with _user_errors():
            yield
    except DatabaseUnavailable as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        hint = " (run `kdserve db upgrade` first?)" if "no such table" in reason else ""
        err.print(f"[red]error:[/] database: {escape(reason)}{hint}")
        raise typer.Exit(1) from None
