"""Starting the sandboxed child and talking to it (the worker's side).

The child gets a folder of its own and nothing else: an environment without a single
``KDSERVE_`` variable (no database URL, broker URL or storage credentials), and, where
bubblewrap (``bwrap``) can create namespaces, a view of the filesystem that holds only
the system libraries, Python, kdserve's code and that folder (read-only but for the
folder), no network at all, its own process table and no capabilities. Where bwrap is
missing or cannot run (a container whose seccomp profile forbids namespaces), the child
still runs as a separate process with the same environment and limits, and checkpoints
that carry code are refused, since only the namespaces keep their code from the network
and the worker's files.

The worker stays in charge: it enforces the wall-clock limit, forwards cancel requests,
kills the child when it must, and treats every byte the child sends as untrusted.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from pydantic import ValidationError

import kdcore
import worker
from worker.sandbox.protocol import (
    ACK,
    CACHE_DONE,
    CACHE_NONE,
    CACHE_READY,
    CANCEL,
    MAX_LINE_BYTES,
    REQUEST_NAME,
    CacheMessage,
    DatasetRequest,
    DistillRequest,
    ErrorCode,
    ErrorMessage,
    ProgressMessage,
    TeacherRequest,
    parse_message,
)

log = logging.getLogger(__name__)

Isolation = Literal["bwrap", "process"]
CANCEL_GRACE_S = 30.0  # a child that ignores "cancel" this long is killed
_WATCH_INTERVAL_S = 0.2
# The only variables the child inherits; everything else (KDSERVE_*, AWS_*, ...) stays out.
_PASSED_ENV = ("LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
# The project root the worker's own code was imported from. The child runs with ``-I``
# (no PYTHONPATH, no current folder on sys.path), so without this it would import whatever
# kdserve is installed, which need not be the code that started it (a checkout beside an
# editable install): it is put first on the child's sys.path.
PROJECT_ROOT = Path(worker.__file__ or "").resolve().parent.parent
_CHILD_BOOT = (
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
    "runpy.run_module('worker.sandbox.child', run_name='__main__', alter_sys=True)"
)
# System paths the child reads (libraries, the dynamic loader's cache, time zones).
_SYSTEM_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/sys",
)


class SandboxFailed(Exception):
    """The child ended without a result: ``code`` says why, the message what to do."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@functools.cache
def available_isolation() -> Isolation:
    """``bwrap`` when bubblewrap runs here (probed once per process), else ``process``."""
    if shutil.which("bwrap") is None:
        log.warning("bubblewrap (bwrap) is not installed: the sandbox is a plain child process")
        return "process"
    probe = subprocess.run(
        [*_bwrap_argv(Path("/"), {}), "--", sys.executable, "-c", "pass"],
        capture_output=True,
        env={},
        timeout=60,
        check=False,
    )
    if probe.returncode != 0:
        log.warning(
            "bubblewrap cannot create namespaces here (%s): the sandbox is a plain child "
            "process, and code checkpoints are refused",
            probe.stderr.decode(errors="replace").strip()[:300],
        )
        return "process"
    return "bwrap"


def child_env(box: Path) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    return {
        **env,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(box),
        "USER": "kdserve",
        "TMPDIR": str(box / "tmp"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _readable_paths() -> list[str]:
    """Python (the venv and the install it points to) and kdserve's own packages."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths |= {os.path.realpath(p) for p in list(paths)}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    for package in (kdcore, worker):
        paths.add(str(Path(package.__file__ or "").resolve().parent))
    return sorted(paths)


def _bwrap_argv(box: Path, env: dict[str, str]) -> list[str]:
    argv = [
        "bwrap",
        "--unshare-all",  # user (where it can), pid, network, ipc, uts, cgroup
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    for path in (*_SYSTEM_PATHS, *_readable_paths()):
        argv += ["--ro-bind-try", path, path]
    for device in sorted(glob.glob("/dev/nvidia*")):  # GPU workers
        argv += ["--dev-bind", device, device]
    if box != Path("/"):
        argv += ["--bind", str(box), str(box), "--chdir", str(box)]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return argv


Request = DistillRequest | TeacherRequest | DatasetRequest


class CacheHandler(Protocol):
    """The worker's side of the teacher cache for one job (:class:`worker.cache.JobCache`).

    The key has passed the protocol's pattern. Errors are the handler's to log: any
    exception is answered as "no entry" / "done", since the cache only ever saves time.
    """

    def get(self, key: str) -> bool:
        """Place the entry in the child's cache folder; False when there is none."""

    def put(self, key: str) -> None:
        """Store the entry the child built (in its cache folder) and record it."""

    def discard(self, key: str) -> None:
        """Delete the entry (object and row): it failed the child's verification."""


def run_in_sandbox(
    request: Request,
    box: Path,
    *,
    isolation: Isolation,
    time_limit_s: float,
    log_path: Path,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    cache: CacheHandler | None = None,
) -> dict[str, Any]:
    """Run ``request`` in a child confined to ``box``; return its result.

    ``on_progress`` gets each progress message's fields (after an ``epoch`` one the child
    waits until it returns). ``should_cancel`` is polled; when it turns true the child is
    asked to stop, and killed if it has not within :data:`CANCEL_GRACE_S`. ``cache``
    answers the child's cache messages (without one: never an entry).

    Raises:
        SandboxFailed: the child reported an error, was canceled, ran out of time or
            memory, crashed, or broke the protocol.
    """
    (box / REQUEST_NAME).write_text(request.model_dump_json())
    (box / "tmp").mkdir(exist_ok=True)
    events_r, events_w = os.pipe()
    control_r, control_w = os.pipe()
    argv = [sys.executable, "-I", "-c", _CHILD_BOOT, str(PROJECT_ROOT), str(box)]
    argv += [str(events_w), str(control_r)]
    env = child_env(box)
    if isolation == "bwrap":
        argv = [*_bwrap_argv(box, env), "--", *argv]
    with log_path.open("ab") as log_file:
        try:
            proc = subprocess.Popen(
                argv,
                env=env,  # bwrap too: its own environment is readable in /proc/1/environ
                cwd=box,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                pass_fds=(events_w, control_r),
                # Not in the worker's process group: Ctrl-C on `kdserve up` must not kill
                # a job mid-epoch (the child dies with the worker through its pipes).
                start_new_session=True,
            )
        finally:
            os.close(events_w)
            os.close(control_r)
    # Non-blocking: a child that stops reading its control pipe must not block the worker.
    os.set_blocking(control_w, False)
    watch = _Watch(proc, os.fdopen(control_w, "wb", buffering=0), time_limit_s, should_cancel)
    try:
        with os.fdopen(events_r, "rb") as events:
            return _converse(events, watch, on_progress, cache)
    except SandboxFailed as exc:
        # C++ code that cannot allocate throws std::bad_alloc; outside torch's translation
        # to a Python error, the runtime aborts the process, saying so on stderr.
        if exc.code == "crashed" and "std::bad_alloc" in _tail(log_path):
            raise SandboxFailed(
                "out_of_memory", f"{exc}: a C++ allocation failed (std::bad_alloc)"
            ) from exc
        raise
    finally:
        watch.stop()
        if proc.returncode not in (0, None):
            log.info("sandbox output (last lines):\n%s", _tail(log_path))


def _answer_cache(cache: CacheHandler | None, message: CacheMessage) -> bytes:
    """Do what a cache message asks; the line to answer with."""
    if message.action == "get":
        try:
            return CACHE_READY if cache is not None and cache.get(message.key) else CACHE_NONE
        except Exception:
            log.exception("teacher cache: could not serve entry %s", message.key)
            return CACHE_NONE
    try:
        if cache is not None:
            (cache.put if message.action == "put" else cache.discard)(message.key)
    except Exception:
        log.exception("teacher cache: could not %s entry %s", message.action, message.key)
    return CACHE_DONE


def _tail(path: Path, size: int = 2000) -> str:
    """The end of the child's output (which it controls: it may be gigabytes)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read(size).decode(errors="replace")
    except OSError:
        return ""


def _converse(
    events: IO[bytes],
    watch: _Watch,
    on_progress: Callable[[dict[str, Any]], None] | None,
    cache: CacheHandler | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] | None = None
    error: ErrorMessage | None = None
    while line := events.readline(MAX_LINE_BYTES + 1):
        try:
            if len(line) > MAX_LINE_BYTES or not line.endswith(b"\n"):
                raise ValueError("message too long")
            message = parse_message(line)
        except (ValueError, ValidationError) as exc:
            watch.kill()
            raise SandboxFailed(
                "internal", "the training process sent an unreadable message and was stopped"
            ) from exc
        if isinstance(message, ProgressMessage):
            if on_progress is not None:
                try:
                    on_progress(message.progress)
                except ValueError as exc:  # pydantic's ValidationError too
                    watch.kill()
                    raise SandboxFailed(
                        "internal", f"the training process sent an invalid progress report ({exc})"
                    ) from exc
            if message.progress.get("kind") == "epoch":
                # The epoch's write may have just read a cancel request: pass it on first,
                # so the child stops before its next step rather than after another epoch.
                watch.check_cancel()
                watch.send(ACK)
        elif isinstance(message, CacheMessage):
            watch.send(_answer_cache(cache, message))
        elif isinstance(message, ErrorMessage):
            error = message
        else:
            result = message.result
    returncode = watch.wait()
    if watch.timed_out:
        raise SandboxFailed("time_limit", f"it ran past its time limit of {watch.limit_s:g} s")
    if error is not None:
        raise SandboxFailed(error.code, error.message)
    if result is not None and returncode == 0:
        return result
    if watch.cancel_sent:
        raise SandboxFailed("canceled", "canceled")
    raise SandboxFailed("crashed", _crash_message(returncode))


def _crash_message(returncode: int) -> str:
    # Popen reports a signal as -N; bwrap, like a shell, as 128 + N.
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        cause = f"was killed by {name}"
        if signum == signal.SIGKILL:
            cause += " (most often: it ran out of memory)"
    else:
        cause = f"exited with status {returncode} without a result"
    return (
        f"the training process {cause}; try a smaller batch size or model, or ask the "
        "operator to raise KDSERVE_SANDBOX_MEMORY_MB"
    )


class _Watch:
    """A thread that enforces the time limit and forwards cancel requests."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        control: IO[bytes],
        limit_s: float,
        should_cancel: Callable[[], bool] | None,
    ) -> None:
        self.proc, self.control, self.limit_s = proc, control, limit_s
        self.should_cancel = should_cancel
        self.timed_out = False
        self.cancel_sent = False
        self._canceled_at = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._deadline = time.monotonic() + limit_s
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sandbox-watch")
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(_WATCH_INTERVAL_S) and self.proc.poll() is None:
            now = time.monotonic()
            if now > self._deadline:
                self.timed_out = True
                self.kill()
            elif self.cancel_sent and now - self._canceled_at > CANCEL_GRACE_S:
                self.kill()
            else:
                self.check_cancel()

    def check_cancel(self) -> None:
        """Send ``cancel`` once, as soon as ``should_cancel`` turns true."""
        with self._lock:
            if self.cancel_sent or self.should_cancel is None or not self.should_cancel():
                return
            self.cancel_sent, self._canceled_at = True, time.monotonic()
        self.send(CANCEL)

    def send(self, line: bytes) -> None:
        """Write one line to the child; never blocks (the pipe is non-blocking)."""
        with self._lock:
            try:
                written = self.control.write(line)
            except BlockingIOError:
                written = None
            except (BrokenPipeError, ValueError):  # the child is gone, or we closed it
                return
        if written != len(line):  # the pipe is full: the child stopped reading it
            log.warning("the sandboxed child stopped reading its control pipe; killing it")
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # bwrap's --die-with-parent takes the child with it

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self) -> None:
        """End the conversation: close the pipe (the child exits), reap it, stop the thread."""
        self._done.set()
        with self._lock:
            self.control.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        self._thread.join()
