"""The job sandbox with real child processes: what a hostile teacher can and cannot reach,
and how limits, crashes and a dying worker end a run."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kdcore.runtime import DeviceUnavailable
from store.models import AssetStatus, Teacher
from tests.worker.factories import Env, create_teacher, create_tenant
from worker.files import SandboxOutput, UnsafeOutput
from worker.retry import NO_WAIT
from worker.sandbox import SandboxFailed, available_isolation, run_in_sandbox
from worker.sandbox.child import _error
from worker.sandbox.protocol import (
    DatasetRequest,
    DistillRequest,
    Limits,
    TeacherInput,
    TeacherRequest,
)
from worker.validation import validate_teacher

SECRET = f"s3cr3t-{uuid.uuid4().hex}"
LIMITS = Limits(memory_mb=0, file_mb=0, threads=1)
SHAPE = [3, 2, 2]
needs_bwrap = pytest.mark.skipif(
    available_isolation() != "bwrap",
    reason="bubblewrap cannot create namespaces here (.ci/run installs it)",
)


class _Exec:
    """Unpickles into a call of ``exec(source)``: the payload of a hostile checkpoint."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.source,))


def hostile_pt2(path: Path, payload: str) -> None:
    """A real ``torch.export`` file, one of whose weights is a pickle that runs ``payload``
    when ``torch.export.load`` reads it (it unpickles pickled weights with
    ``weights_only=False``)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    buf = io.BytesIO()
    torch.export.save(torch.export.export(model, (torch.zeros(1, *SHAPE),)), buf)
    evil = io.BytesIO()
    torch.save(_Exec(payload), evil)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("weights/model_weights_config.json"):
                config = json.loads(data)
                config["config"]["1.bias"]["use_pickle"] = True
                data = json.dumps(config).encode()
            elif info.filename.endswith("weights/weight_1"):
                data = evil.getvalue()
            dst.writestr(info.filename, data)


# What the payload tries: read every environment it can see, reach Postgres and Redis,
# write outside its folder, and leave evidence in its folder for the test to read.
SPY = textwrap.dedent(
    """
    import glob, json, os, socket
    seen = {"env": dict(os.environ), "proc": {}, "net": {}, "write": {}, "pid": os.getpid()}
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(path, "rb") as f:
                seen["proc"][path] = f.read().decode(errors="replace")
        except OSError as exc:
            seen["proc"][path] = "refused: " + type(exc).__name__
    for port in (5432, 6379):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            seen["net"][port] = "connected"
        except OSError as exc:
            seen["net"][port] = str(exc)
    for target in (OUTSIDE, CODE):
        try:
            with open(target, "a") as f:
                f.write("escaped")
            seen["write"][target] = "wrote"
        except OSError as exc:
            seen["write"][target] = str(exc)
    with open("evidence.json", "w") as f:
        json.dump(seen, f)
    """
)


KDCORE_INIT = Path(__file__).resolve().parents[2] / "kdcore" / "__init__.py"


def spy(outside: Path) -> str:
    return f"OUTSIDE = {str(outside)!r}\nCODE = {str(KDCORE_INIT)!r}\n{SPY}"


def teacher_request(allow_code: bool = True) -> TeacherRequest:
    return TeacherRequest(
        limits=LIMITS,
        teacher=TeacherInput(path="weights", allow_code=allow_code),
        input_shape=SHAPE,
        num_classes=3,
    )


def run(request: Any, box: Path, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("isolation", available_isolation())
    kwargs.setdefault("time_limit_s", 120)
    return run_in_sandbox(request, box, log_path=box.parent / "sandbox.log", **kwargs)


@pytest.fixture
def box(tmp_path: Path) -> Path:
    path = tmp_path / "box"
    path.mkdir()
    return path


@needs_bwrap
def test_a_hostile_pt2_sees_no_secret_no_database_and_cannot_write_outside(
    box: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's own secrets, as production sets them.
    monkeypatch.setenv("KDSERVE_DATABASE_URL", f"postgresql://kd:{SECRET}@127.0.0.1:5432/test")
    monkeypatch.setenv("KDSERVE_S3_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    outside = tmp_path / "escaped.txt"
    hostile_pt2(box / "weights", spy(outside))

    with pytest.raises(SandboxFailed) as failed:
        run(teacher_request(), box, isolation="bwrap")

    evidence = json.loads((box / "evidence.json").read_text())  # so the payload did run
    assert SECRET not in json.dumps(evidence)
    assert not any(k.startswith(("KDSERVE_", "AWS_")) for k in evidence["env"])
    assert evidence["proc"], "the payload saw no process at all"
    # Its own pid namespace: the worker and every other process are out of sight.
    assert evidence["pid"] < 10
    assert evidence["net"] == {
        "5432": "[Errno 111] Connection refused",
        "6379": "[Errno 111] Connection refused",
    }
    # kdserve's code is read-only; /tmp is a private tmpfs that vanishes with the child.
    assert "Read-only file system" in evidence["write"][str(KDCORE_INIT)]
    assert "escaped" not in KDCORE_INIT.read_text()
    assert not outside.exists()
    # And the run ends as a clean failure, with the loader's message.
    assert failed.value.code == "invalid_input"
    assert "could not be loaded as a torch.export program" in str(failed.value)


def validate_hostile(env: Env, content: Path, **settings: Any) -> Teacher:
    """Upload ``content`` as a teacher (code checkpoints enabled) and validate it."""
    teacher_id = env.add(
        lambda s: (
            create_teacher(
                s,
                env.store,
                create_tenant(s).id,
                content=content.read_bytes(),
                status=AssetStatus.validating,
                arch=None,
                input_shape=SHAPE,
                num_classes=3,
            ).id
        )
    )
    allowed = env.settings.model_copy(update={"allow_code_checkpoints": True, **settings})
    status = validate_teacher(
        str(teacher_id), settings=allowed, sessions=env.sessions, store=env.store, retries=NO_WAIT
    )
    assert status is AssetStatus.invalid
    with env.sessions() as s:
        row = s.get(Teacher, teacher_id)
        assert row is not None
        assert row.error is not None
        return row


def test_without_namespaces_code_checkpoints_are_refused_before_loading(
    env: Env, tmp_path: Path
) -> None:
    outside = tmp_path / "ran.txt"
    content = tmp_path / "evil.pt2"
    hostile_pt2(content, f"open({str(outside)!r}, 'w').write('ran')")
    row = validate_hostile(env, content, sandbox="process")
    assert row.error is not None
    assert "cannot sandbox them" in row.error
    assert not outside.exists()


@needs_bwrap
def test_a_hostile_teacher_upload_is_invalid_and_the_worker_goes_on(
    env: Env, tmp_path: Path
) -> None:
    outside = tmp_path / "escaped.txt"
    content = tmp_path / "evil.pt2"
    hostile_pt2(content, spy(outside))
    row = validate_hostile(env, content)
    assert row.error is not None
    assert "torch.export program" in row.error
    assert row.blob_id is None  # the file is deleted with the refusal
    assert not outside.exists()


def test_a_memory_hog_fails_as_out_of_memory(box: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(box / "d.npz", x=rng.normal(size=(8, 1, 4, 4)).astype("float32"), y=np.arange(8) % 2)
    request = DistillRequest(
        limits=Limits(memory_mb=1500, file_mb=64, threads=1),
        student={"family": "mlp", "hidden": [200_000, 200_000]},  # 160 GB of weights
        config={"method": "scratch", "epochs": 1, "batch_size": 4},
        data="d.npz",
        formats=["safetensors"],
    )
    with pytest.raises(SandboxFailed) as failed:
        run(request, box)
    assert failed.value.code == "out_of_memory"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (MemoryError(), "out_of_memory"),
        # As torch words them: its CPU allocator, CUDA's, and a C++ allocation it translated.
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 1099511627776 bytes. Error code 12"
            ),
            "out_of_memory",
        ),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
            "out_of_memory",
        ),
        (RuntimeError("std::bad_alloc"), "out_of_memory"),
        (DeviceUnavailable('config asks for device "cuda" but no CUDA GPU'), "no_gpu"),
        (OverflowError("Python int too large to convert to C long"), "invalid_input"),
        (ValueError("bad spec"), "invalid_input"),
        (KeyError("bug"), "internal"),
    ],
)
def test_the_child_sorts_errors_into_codes(exc: BaseException, code: str) -> None:
    assert _error(exc)[0] == code


def test_a_cpp_allocation_that_aborts_the_child_fails_as_out_of_memory(box: Path) -> None:
    # operator new, asked for 4 EiB from C: std::bad_alloc with no Python frame to turn it
    # into an error, so the C++ runtime aborts the process (SIGABRT), saying why on stderr.
    hostile_pt2(
        box / "weights",
        "import ctypes\n"
        "new = ctypes.CDLL('libstdc++.so.6')._Znwm\n"
        "new.argtypes = [ctypes.c_size_t]\n"
        "new(2 ** 62)",
    )
    with pytest.raises(SandboxFailed) as failed:
        run(teacher_request(), box)
    assert failed.value.code == "out_of_memory"
    assert "SIGABRT" in str(failed.value)
    assert "std::bad_alloc" in str(failed.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_on_a_machine_without_a_gpu_fails_as_no_gpu_before_loading_data(box: Path) -> None:
    request = DistillRequest(
        limits=LIMITS,
        student={"family": "mlp", "hidden": [4]},
        config={"method": "scratch", "epochs": 1, "device": "cuda"},
        data="missing.npz",  # never read: the device is checked first
        formats=["safetensors"],
    )
    with pytest.raises(SandboxFailed) as failed:
        run(request, box)
    assert failed.value.code == "no_gpu"
    assert 'device "cuda" but no CUDA GPU is available' in str(failed.value)


def test_the_time_limit_kills_the_child(box: Path) -> None:
    (box / "weights").write_bytes(b"unused")
    started = time.monotonic()
    with pytest.raises(SandboxFailed) as failed:
        # Nothing loads torch in under half a second: the limit always strikes first.
        run(DatasetRequest(limits=LIMITS, path="weights", max_members=10), box, time_limit_s=0.5)
    assert failed.value.code == "time_limit"
    assert time.monotonic() - started < 30


def test_a_child_that_dies_is_a_crash_not_a_hang(box: Path, tmp_path: Path) -> None:
    content = box / "weights"
    hostile_pt2(content, "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(SandboxFailed) as failed:
        run(teacher_request(), box)
    assert failed.value.code == "crashed"
    assert "SIGSEGV" in str(failed.value)


def test_a_child_that_breaks_the_protocol_is_stopped(box: Path) -> None:
    # The payload finds the message pipe in its command line and writes junk to it.
    payload = "import os, sys, time\nos.write(int(sys.argv[2]), b'junk\\n')\ntime.sleep(60)"
    hostile_pt2(box / "weights", payload)
    started = time.monotonic()
    with pytest.raises(SandboxFailed) as failed:
        run(teacher_request(), box)
    assert failed.value.code == "internal"
    assert "unreadable message" in str(failed.value)
    assert time.monotonic() - started < 30


def _sandbox_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and b"worker.sandbox.child" in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_the_child_dies_with_a_killed_worker(box: Path, tmp_path: Path) -> None:
    """SIGKILL the worker (here a small process standing in for it): its child must not
    live on, training into a folder nobody will collect."""
    hostile_pt2(box / "weights", "import time; time.sleep(300)")
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from pathlib import Path
                from tests.worker.test_sandbox import run, teacher_request
                run(teacher_request(), Path({str(box)!r}))
                """
            ),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 60
    while not _sandbox_pids(str(box)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sandbox_pids(str(box)), "the sandbox never started"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while _sandbox_pids(str(box)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sandbox_pids(str(box)) == []


def test_only_plain_files_of_the_sandbox_are_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.bin").write_bytes(b"weights")
    (out / "link").symlink_to(secret)
    os.link(secret, out / "hardlink")
    os.mkfifo(out / "fifo")
    (out / "folder").mkdir()
    with SandboxOutput(out) as output:
        assert output.plain_files() == ["model.bin"]
        with output.open("model.bin") as f:
            assert f.read() == b"weights"
        with pytest.raises(OSError, match="Too many levels of symbolic links"):  # O_NOFOLLOW
            with output.open("link"):
                pass
        for name in ("hardlink", "fifo", "../secret"):
            with pytest.raises(UnsafeOutput), output.open(name):
                pass


def test_a_sandbox_that_swaps_its_output_folder_for_a_link_exposes_nothing(
    tmp_path: Path,
) -> None:
    """The child owns its folder: it can replace ``out`` by a symlink to a folder of the
    worker's. The worker reads through the descriptor it opened before the child started."""
    private = tmp_path / "worker-secrets"
    private.mkdir()
    (private / "kdserve.db").write_text(SECRET)
    out = tmp_path / "box" / "out"
    out.mkdir(parents=True)
    with SandboxOutput(out) as output:
        (out / "report.json").write_text("{}")
        shutil.rmtree(out)  # what a hostile child does, then:
        out.symlink_to(private)
        assert output.plain_files() == []
        with pytest.raises(FileNotFoundError):
            with output.open("kdserve.db"):
                pass
