"""The sandboxed child: ``worker.sandbox.child <folder> <events fd> <control fd>``, run by
the launcher under ``python -I`` from the project root the worker itself was imported from.

It holds no database, broker or storage settings: it reads ``request.json`` and its inputs
from its folder, writes its outputs to ``out/`` there, and talks to the worker over two
pipes (:mod:`worker.sandbox.protocol`). The limits are applied before anything is loaded,
so a teacher file never runs without them.
"""

from __future__ import annotations

import ctypes
import os
import queue
import resource
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pydantic import TypeAdapter

from worker.sandbox.protocol import (
    ACK,
    CACHE_REPLIES,
    CANCEL,
    CODE_FORMATS,
    REQUEST_NAME,
    CacheMessage,
    DatasetRequest,
    DatasetResult,
    DistillRequest,
    ErrorCode,
    ErrorMessage,
    Limits,
    ProgressMessage,
    Request,
    ResultMessage,
    TeacherInput,
    TeacherRequest,
    TeacherResult,
)

MiB = 1024 * 1024
_PR_SET_PDEATHSIG = 1


class Channel:
    """The child's end of the pipes: messages out, ``ack``/``cancel`` and the answers to
    cache messages in."""

    def __init__(self, events_fd: int, control_fd: int) -> None:
        self._out: IO[bytes] = os.fdopen(events_fd, "wb", buffering=0)
        self._in: IO[bytes] = os.fdopen(control_fd, "rb", buffering=0)
        self._lock = threading.Lock()
        self._acked = threading.Semaphore(0)
        self._cache_replies: queue.Queue[bytes] = queue.Queue()
        self.canceled = threading.Event()
        threading.Thread(target=self._listen, daemon=True, name="control").start()

    def _listen(self) -> None:
        for line in self._in:
            if line == ACK:
                self._acked.release()
            elif line == CANCEL:
                self.canceled.set()
            elif line in CACHE_REPLIES:
                self._cache_replies.put(line)
        # The worker is gone (its end of the pipe closed): nobody will collect the results.
        os._exit(70)

    def send(self, message: ProgressMessage | ResultMessage | ErrorMessage | CacheMessage) -> None:
        data = message.model_dump_json().encode() + b"\n"
        with self._lock:
            self._out.write(data)

    def send_and_wait(self, message: ProgressMessage) -> None:
        self.send(message)
        self._acked.acquire()

    def ask(self, message: CacheMessage) -> bytes:
        """Send a cache message and wait for the worker's answer (one at a time: the
        training thread is the only one that asks)."""
        self.send(message)
        return self._cache_replies.get()


def apply_limits(limits: Limits) -> None:
    """Address space and file size caps, no core dumps, and death with the parent."""
    if limits.memory_mb:
        size = limits.memory_mb * MiB
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    if limits.file_mb:
        size = limits.file_mb * MiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the cap raises EFBIG
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _progress_fn(channel: Channel) -> Callable[[Any], None]:
    from dataclasses import asdict

    def report(p: Any) -> None:
        message = ProgressMessage(progress=asdict(p))
        if p.kind == "epoch":  # the parent saves the checkpoint before we go on
            channel.send_and_wait(message)
        else:
            channel.send(message)

    return report


def _distill(req: DistillRequest, box: Path, channel: Channel) -> dict[str, Any]:
    from kdcore import pipeline

    teacher = None
    if req.teacher is not None:
        _refuse_code(req.teacher, box)
        teacher = pipeline.TeacherFile(
            box / req.teacher.path, spec=req.teacher.arch, allow_code=req.teacher.allow_code
        )
    (box / "out").mkdir(exist_ok=True)
    cache = None
    if req.cache is not None:
        from worker.sandbox.cache import WorkerCache

        cache = WorkerCache(box, channel)
    report = pipeline.run(
        spec=req.student,
        config=req.config,
        data=box / req.data,
        val=box / req.val if req.val else None,
        teacher=teacher,
        out_dir=box / "out",
        on_progress=_progress_fn(channel),
        should_cancel=channel.canceled.is_set,
        formats=req.formats,
        resume=True,
        teacher_cache=cache,
        cache_tenant=req.cache.tenant if req.cache is not None else None,
        cache_entry_max_bytes=req.cache.entry_max_bytes if req.cache is not None else None,
    )
    return report.model_dump(mode="json")


def _teacher(req: TeacherRequest, box: Path, channel: Channel) -> dict[str, Any]:
    from kdcore.inspection import inspect_model
    from kdcore.weights import detect_format, load_model

    path = box / req.teacher.path
    _refuse_code(req.teacher, box)
    fmt = detect_format(path)
    shape = tuple(req.input_shape)
    model = load_model(
        path, req.teacher.arch, shape, req.num_classes, allow_code=req.teacher.allow_code
    )
    summary = inspect_model(model, shape)
    layers = [{"path": layer.path, "shape": layer.shape} for layer in summary.layers]
    result = TeacherResult(format=fmt, layers=layers, params=summary.params, macs=summary.macs)
    return result.model_dump()


def _refuse_code(teacher: TeacherInput, box: Path) -> None:
    from kdcore.weights import WeightsError, detect_format

    if teacher.code_refusal and detect_format(box / teacher.path) in CODE_FORMATS:
        raise WeightsError(teacher.code_refusal)


def _dataset(req: DatasetRequest, box: Path, channel: Channel) -> dict[str, Any]:
    from kdcore.data import load_dataset

    data = load_dataset(box / req.path, max_members=req.max_members)
    result = DatasetResult(
        samples=len(data), input_shape=list(data.input_shape), classes=list(data.classes)
    )
    return result.model_dump()


# What torch's allocators and its C++ translation say when memory runs out: the CPU
# allocator ("DefaultCPUAllocator: can't allocate memory"), CUDA ("CUDA out of memory"), and
# a C++ allocation that failed ("std::bad_alloc").
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "bad_alloc")


def _error(exc: BaseException) -> tuple[ErrorCode, str]:
    """Sort an exception into the codes the worker understands."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(s in text.lower() for s in _OUT_OF_MEMORY)
    ):
        return "out_of_memory", text
    from kdcore.runtime import DeviceUnavailable  # imported: exc may be from before torch
    from kdcore.train import Canceled, Diverged

    if isinstance(exc, DeviceUnavailable):
        return "no_gpu", text
    if isinstance(exc, Canceled):
        return "canceled", text
    if isinstance(exc, Diverged):
        return "diverged", text
    if isinstance(exc, ValueError):  # bad spec, config, layer, shape, data or weights
        return "invalid_input", text
    if isinstance(exc, OverflowError):  # a number in the spec or config too large to compute
        return "invalid_input", f"a value is too large to compute with ({text})"
    return "internal", f"{type(exc).__name__}: {text}"


def main(argv: list[str]) -> int:
    box, events_fd, control_fd = Path(argv[0]), int(argv[1]), int(argv[2])
    request = TypeAdapter(Request).validate_json((box / REQUEST_NAME).read_bytes())
    apply_limits(request.limits)
    channel = Channel(events_fd, control_fd)
    os.environ.setdefault("TMPDIR", str(box / "tmp"))
    (box / "tmp").mkdir(exist_ok=True)
    try:
        if request.limits.threads:
            import torch

            torch.set_num_threads(request.limits.threads)
        ops: dict[str, Callable[[Any, Path, Channel], dict[str, Any]]] = {
            "distill": _distill,
            "teacher": _teacher,
            "dataset": _dataset,
        }
        result = ops[request.op](request, box, channel)
    except BaseException as exc:  # everything goes back to the worker as a message
        code, text = _error(exc)
        channel.send(ErrorMessage(code=code, message=text[:4000]))
        return 1
    channel.send(ResultMessage(result=result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
