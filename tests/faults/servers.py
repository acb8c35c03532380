"""The parts that the fault tests break on purpose: a private Redis and a private PostgreSQL
cluster on free loopback ports (the machine's own servers are never touched), a hook into
moto's S3 server that can hold or fail writes, and helpers that look at processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.s3 import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def wait_until(check: Callable[[], bool], *, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


# -- Redis ----------------------------------------------------------------------------------


@dataclass
class RedisServer:
    """``redis-server`` on a free port. ``persistent`` models a production Redis with an
    append-only file fsynced on every write: queued messages survive even a SIGKILL."""

    dir: Path
    persistent: bool
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", str(self.dir), "--protected-mode", "no"]
        argv += ["--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always"]
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        if not wait_until(up, timeout=20):
            text = (self.dir / "redis.log").read_text()
            raise RuntimeError(f"redis-server did not start:\n{text}")

    def crash(self) -> None:
        """SIGKILL: no shutdown save, as a machine losing power would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


# -- PostgreSQL -----------------------------------------------------------------------------


@dataclass
class PgCluster:
    """A throw-away cluster (``initdb``) on a free port that the tests stop and start."""

    dir: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def url(self, db: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{db}"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        cmd = list(argv)
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")

    def init(self) -> None:
        initdb = PG_BIN / "initdb"
        if not initdb.exists():
            pytest.skip(f"no {initdb}: cannot create a private PostgreSQL cluster")
        if os.geteuid() == 0:
            if (
                shutil.which("runuser") is None
                or subprocess.run(["id", "postgres"], capture_output=True, check=False).returncode
            ):
                pytest.skip("running as root without a `postgres` user to run initdb as")
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(initdb), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts,
            "-l", str(self.dir / "pg.log"), "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    # Not under pytest's tmp_path: its folders are private to root, and postgres runs as
    # the `postgres` user.
    folder = Path(tempfile.mkdtemp(prefix="kdserve-pg-"))
    folder.chmod(0o755)
    cluster = PgCluster(folder)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(folder, ignore_errors=True)


# -- S3: holding and failing writes -----------------------------------------------------


class Hold:
    """One S3 call held in moto's request thread until the test releases it."""

    def __init__(self, match: Callable[[str, str], bool]) -> None:
        self.match = match
        self.arrived = threading.Event()
        self.key = ""
        self._released = threading.Event()
        self._fail = False

    def release(self, *, fail: bool = False) -> None:
        self._fail = fail
        self._released.set()

    def wait(self, timeout: float) -> str:
        if not self.arrived.wait(timeout):
            raise AssertionError("the S3 call being waited for never came")
        return self.key


class S3Faults:
    """Hooks into moto's in-process S3 backend (the server runs in the test process): a
    :class:`Hold` stops one matching call until released; while ``down`` is set, every
    write fails as a broken storage server would (500, retried by botocore, then an error).
    """

    WRITES = ("put_object", "create_multipart_upload", "upload_part", "complete_multipart_upload")
    READS = ("get_object",)

    def __init__(self) -> None:
        self.down = threading.Event()
        self.holds: list[Hold] = []
        self._lock = threading.Lock()

    def hold(self, match: Callable[[str, str], bool]) -> Hold:
        """Hold the next call ``match(method, key)`` accepts (once)."""
        h = Hold(match)
        with self._lock:
            self.holds.append(h)
        return h

    def install(self, mp: pytest.MonkeyPatch) -> None:
        from moto.s3.models import S3Backend

        for name in (*self.WRITES, *self.READS):
            mp.setattr(S3Backend, name, self._wrap(name, getattr(S3Backend, name)))

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(backend: Any, *args: Any, **kwargs: Any) -> Any:
            key = _key_of(backend, name, args, kwargs)
            with self._lock:
                hold = next((h for h in self.holds if h.match(name, key)), None)
                if hold is not None:
                    self.holds.remove(hold)
            if hold is not None:
                hold.key = key
                hold.arrived.set()
                hold._released.wait(120)
                if hold._fail:
                    raise RuntimeError(f"injected storage failure on {name} {key}")
            if self.down.is_set() and name in self.WRITES:
                raise RuntimeError(f"storage is down ({name} {key})")
            return original(backend, *args, **kwargs)

        return hooked


def _key_of(backend: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if name in ("upload_part", "complete_multipart_upload"):
        bucket = kwargs.get("bucket_name", args[0] if args else "")
        upload = kwargs.get("multipart_id", args[1] if len(args) > 1 else "")
        try:
            return str(backend.get_bucket(bucket).multiparts[upload].key_name)
        except Exception:
            return ""
    return str(kwargs.get("key_name", args[1] if len(args) > 1 else ""))


# -- processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    cpu: int  # utime + stime, clock ticks
    cmdline: str


def processes() -> dict[int, Proc]:
    """Every live (non-zombie) process, from /proc."""
    out: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            continue
        out[int(entry.name)] = Proc(
            pid=int(entry.name),
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            sid=int(fields[3]),
            state=fields[0],
            cpu=int(fields[11]) + int(fields[12]),
            cmdline=cmd.strip(),
        )
    return out


def descendants(root: int, table: dict[int, Proc] | None = None) -> list[Proc]:
    table = table if table is not None else processes()
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        for p in table.values():
            if p.ppid == parent:
                found.append(p)
                frontier.append(p.pid)
    return found


def busiest_pool_child(main: int, sample_s: float = 0.6) -> int:
    """The Celery pool child running the job: the child of ``main`` whose subtree burns the
    most CPU (the training runs in it, or in a sandbox process under it)."""
    before = processes()
    time.sleep(sample_s)
    after = processes()

    def subtree_cpu(pid: int) -> int:
        pids = [pid, *(p.pid for p in descendants(pid, after))]
        return sum(after[q].cpu - before[q].cpu for q in pids if q in after and q in before)

    children = [p.pid for p in after.values() if p.ppid == main]
    assert children, f"celery main {main} has no children"
    return max(children, key=subtree_cpu)


def survivors(pids: set[int], *, pgid: int, needles: tuple[str, ...]) -> list[Proc]:
    """Processes still alive that were in ``pids``, are in group/session ``pgid``, or whose
    command line holds one of ``needles``."""
    me = os.getpid()
    return [
        p
        for p in processes().values()
        if p.pid != me
        and (
            p.pid in pids
            or pgid in (p.pgid, p.sid)
            or any(re.search(re.escape(n), p.cmdline) for n in needles)
        )
    ]


def sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- S3 server --------------------------------------------------------------------------


@dataclass
class MotoS3:
    """moto's threaded S3 server on a fixed free port. Its data lives in moto's in-process
    backend, so a stopped server started again still has every object."""

    bucket: str = "kdserve-test"
    port: int = field(default_factory=free_port)
    server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "KDSERVE_STORAGE_URL": f"s3://{self.bucket}/artifacts",
            "KDSERVE_S3_ENDPOINT_URL": self.endpoint,
            "KDSERVE_S3_ACCESS_KEY_ID": "test",
            "KDSERVE_S3_SECRET_ACCESS_KEY": "test",
            "KDSERVE_S3_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        s3 = self.client()
        if self.bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def keys(self, prefix: str) -> list[str]:
        found = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for o in found.get("Contents", [])]

    def pending_uploads(self, prefix: str) -> list[str]:
        found = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [u["Key"] for u in found.get("Uploads", [])]
