"""Service commands: `db upgrade`, `keys`, `worker`, `up`'s pieces (fast), and `kdserve api`
as a real process that the client drives over HTTP (slow)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect
from starlette.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from cli import service
from cli.main import app
from client import KDServeClient
from store.models import Base
from store.settings import Settings

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An embedded KDSERVE_HOME that does not exist yet; no other KDSERVE_* leaks in."""
    for name in list(os.environ):
        if name.startswith("KDSERVE_"):
            monkeypatch.delenv(name)
    path = tmp_path / "deep" / "home"
    monkeypatch.setenv("KDSERVE_HOME", str(path))
    return path


def test_db_upgrade_creates_the_schema_and_is_idempotent(home: Path) -> None:
    first = runner.invoke(app, ["db", "upgrade"])
    again = runner.invoke(app, ["db", "upgrade"])

    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    assert "database is at revision" in again.stderr
    engine = create_engine(f"sqlite:///{home / 'kdserve.db'}")
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert set(Base.metadata.tables) | {"alembic_version"} <= tables


def test_db_upgrade_waits_for_the_database_then_gives_up(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psycopg")
    port = _free_port()  # nothing listens there
    monkeypatch.setenv(
        "KDSERVE_DATABASE_URL", f"postgresql+psycopg://kd:s3cret@127.0.0.1:{port}/kd"
    )

    started = time.monotonic()
    result = runner.invoke(app, ["db", "upgrade", "--timeout", "1"])

    assert result.exit_code == 1
    assert time.monotonic() - started < 10
    assert f"waiting for database postgresql+psycopg://kd:***@127.0.0.1:{port}/kd" in result.stderr
    assert "did not accept connections within 1 s" in result.stderr
    assert "s3cret" not in result.output


def test_keys_create_prints_a_working_key_and_revoke_stops_it(home: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0

    created = runner.invoke(app, ["keys", "create", "--tenant", "acme", "--name", "ci"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("kds_")
    assert "\n" not in key
    assert "shown only this once" in created.stderr

    with TestClient(create_app(Settings())) as http:
        kd = KDServeClient(api_key=key, http=http)
        assert kd.list_jobs() == []

        revoked = runner.invoke(app, ["keys", "revoke", key])
        assert revoked.exit_code == 0, revoked.output

        assert refused_within_the_key_cache_bound(http, key)
        denied = http.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert denied.status_code == 401
        assert denied.json()["code"] == "unauthorized"

    again = runner.invoke(app, ["keys", "revoke", key])
    assert again.exit_code == 2
    assert "no active key" in again.stderr


def refused_within_the_key_cache_bound(http: TestClient, key: str) -> bool:
    """A revoked key is refused within ``KDSERVE_KEY_CACHE_TTL_S`` (api.kit.keycache)."""
    deadline = time.monotonic() + Settings().key_cache_ttl_s + 1
    while time.monotonic() < deadline:
        if http.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401:
            return True
        time.sleep(0.05)
    return False


def test_keys_revoke_needs_the_whole_key_or_an_explicit_prefix(home: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    key = runner.invoke(app, ["keys", "create", "--tenant", "acme"]).stdout.strip()
    other = runner.invoke(app, ["keys", "create", "--tenant", "acme"]).stdout.strip()
    prefix = key.split("_")[1]

    with TestClient(create_app(Settings())) as http:

        def works(k: str) -> bool:
            return http.get("/v1/jobs", headers={"Authorization": f"Bearer {k}"}).is_success

        # The right prefix with a wrong secret revokes nothing.
        forged = runner.invoke(app, ["keys", "revoke", f"kds_{prefix}_{'x' * 43}"])
        assert forged.exit_code == 2
        assert "no active key matches that key" in forged.stderr
        # A prefix alone is not taken for a key.
        bare = runner.invoke(app, ["keys", "revoke", prefix])
        assert bare.exit_code == 2
        assert "kdserve keys revoke --prefix PREFIX" in bare.stderr
        both = runner.invoke(app, ["keys", "revoke", key, "--prefix", prefix])
        assert both.exit_code == 2
        assert works(key)

        by_prefix = runner.invoke(app, ["keys", "revoke", "--prefix", prefix])
        assert by_prefix.exit_code == 0, by_prefix.output
        assert refused_within_the_key_cache_bound(http, key)
        assert works(other)


def test_keys_create_before_db_upgrade_is_one_clear_line(home: Path) -> None:
    home.mkdir(parents=True)
    result = runner.invoke(app, ["keys", "create", "--tenant", "acme"])
    assert result.exit_code == 1
    assert "run `kdserve db upgrade` first?" in result.stderr
    assert "Traceback" not in result.output


def test_worker_command_line(home: Path) -> None:
    settings = Settings()

    plain = service.worker_argv(settings)
    beat = service.worker_argv(
        settings, queues="gpu", concurrency=2, max_tasks_per_child=5, beat=True
    )

    assert plain[:6] == [sys.executable, "-m", "celery", "-A", "worker.app:celery", "worker"]
    assert _opt(plain, "-Q") == "gpu,default"
    assert (_opt(plain, "-c"), _opt(plain, "-P"), _opt(plain, "--max-tasks-per-child")) == (
        "1",
        "prefork",
        "1",
    )
    assert "-B" not in plain
    assert (_opt(beat, "-Q"), _opt(beat, "-c"), _opt(beat, "--max-tasks-per-child")) == (
        "gpu",
        "2",
        "5",
    )
    assert "-B" in beat
    assert _opt(beat, "-s") == str(home.resolve() / "celerybeat-schedule")


def test_worker_without_the_worker_package_is_a_clear_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "WORKER_APP", "no_such_worker.app:celery")
    result = runner.invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "no_such_worker.app is not installed" in result.stderr


def test_up_refuses_a_port_in_use(home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["up", "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_up_creates_the_first_key_once_and_saves_it_private(home: Path) -> None:
    settings = Settings()
    service.upgrade_database(settings.db_url, timeout=5)

    key, key_file = service._first_key(settings)
    again, _ = service._first_key(settings)

    assert key is not None
    assert key.startswith("kds_")
    assert key_file == home.resolve() / "api-key"
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert again is None  # a second start keeps the key it saved
    assert key_file.read_text().strip() == key


def test_supervisor_stops_the_other_child_when_one_dies(tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    crasher = [sys.executable, "-c", "import sys; sys.exit(3)"]
    ready: list[bool] = []

    started = time.monotonic()
    code = service._supervise(
        {"api": sleeper, "worker": crasher},
        env=dict(os.environ),
        health_url=f"http://127.0.0.1:{_free_port()}/healthz",
        stop_timeout=5,
        on_ready=lambda: ready.append(True),
    )

    assert code == 1
    assert not ready
    assert time.monotonic() - started < 10  # the sleeper was stopped, not waited for


def test_supervisor_reports_ready_and_stops_children_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "healthz").write_text("ok")
    port = _free_port()
    web = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    web += ["--directory", str(tmp_path)]
    # Ignores SIGTERM, like a worker finishing a task: it must be killed after the timeout.
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)",
    ]

    def on_ready() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # what `docker stop` or Ctrl-C does to `kdserve up`

    started = time.monotonic()
    code = service._supervise(
        {"api": web, "worker": stubborn},
        env=dict(os.environ),
        health_url=f"http://127.0.0.1:{port}/healthz",
        stop_timeout=1,
        on_ready=on_ready,
    )

    assert code == 0
    assert time.monotonic() - started < 20
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


@pytest.mark.slow
def test_kdserve_api_serves_the_client_over_real_http(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    env["KDSERVE_HOME"] = str(home)
    kdserve = [sys.executable, "-m", "cli.main"]
    migrate = subprocess.run([*kdserve, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert migrate.returncode == 0, migrate.stderr
    key = subprocess.run(
        [*kdserve, "keys", "create", "--tenant", "e2e"], env=env, capture_output=True, text=True
    ).stdout.strip()
    port = _free_port()
    api = subprocess.Popen(
        [*kdserve, "api", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, api)
        with KDServeClient(url, key) as kd:
            data = tmp_path / "train.npz"
            data.write_bytes(os.urandom(3 * 1024 * 1024))
            dataset = kd.upload_dataset(data, name="over the wire")
            assert dataset["status"] == "validating"
            assert dataset["size"] == 3 * 1024 * 1024
            assert [d["id"] for d in kd.list_datasets()] == [dataset["id"]]
    finally:
        api.terminate()
        output = api.communicate(timeout=20)[0].decode(errors="replace")
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert api.returncode in (0, -signal.SIGTERM), output
    assert "Finished server process" in output


# -- helpers -----------------------------------------------------------------------------------


def _opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"kdserve api exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/healthz did not answer in {timeout} s")


def test_up_tells_the_api_whether_this_machine_has_cuda() -> None:
    """`kdserve up` sets KDSERVE_CUDA_WORKERS from what torch sees (its worker runs here)."""
    import torch

    assert service.cuda_available() is torch.cuda.is_available()
