"""What the worker and its sandboxed child say to each other.

The parent writes a :data:`Request` to ``request.json`` in the child's folder. The child
answers on a pipe, one JSON line per message: :class:`ProgressMessage` while it trains,
then one :class:`ResultMessage` or :class:`ErrorMessage`. After an ``epoch`` progress
message the child waits for the parent's ``ack`` line on a second pipe (the parent saves
the checkpoint meanwhile, so it never reads a file the child is rewriting); ``cancel`` on
that pipe asks the child to stop at the next step.

The teacher cache (:mod:`kdcore.cache`) lives in the worker's storage and database, which the
child cannot reach. A :class:`DistillRequest` with ``cache`` set lets the child ask for entries
by key with a :class:`CacheMessage` and wait for the answer on the control pipe:

- ``get``: the worker fetches the tenant's entry into ``cache/<key>.safetensors`` in the
  child's folder and answers :data:`CACHE_READY`, or :data:`CACHE_NONE` when it has none
  (or cannot fetch it). The child verifies what it reads (:func:`kdcore.cache.load_or_build`).
- ``put``: the child built the entry into ``cache/<key>.safetensors``; the worker uploads it
  under the tenant's prefix, records it, and answers :data:`CACHE_DONE` (also when it did
  not keep it: the child goes on with its own copy).
- ``discard``: the entry it was given failed verification; the worker deletes it (object and
  row) and answers :data:`CACHE_DONE`. The child then builds and puts it again.

The worker never parses an entry: it moves whole files, through the folder descriptor it
opened before the child started (:class:`worker.files.SandboxOutput`).

Everything the child sends is untrusted (a code checkpoint may have written to the pipe),
so the parent validates every line with these models and caps line lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from kdcore.contract import CACHE_ENTRY_MAX_BYTES, ArchSpec, DistillConfig

REQUEST_NAME = "request.json"
# A report is a few KB, but a dataset's class names travel in its validation result and in
# the report: kdcore.data bounds them to MAX_CLASS_NAMES_CHARS (1M characters, at most ~4.3 MB
# as JSON). Anything longer is not ours.
MAX_LINE_BYTES = 16 << 20
ACK = b"ack\n"
CANCEL = b"cancel\n"
CACHE_READY = b"cache ready\n"
CACHE_NONE = b"cache none\n"
CACHE_DONE = b"cache done\n"
CACHE_REPLIES = (CACHE_READY, CACHE_NONE, CACHE_DONE)
CACHE_DIR = "cache"  # in the child's folder: the entries it was given or built
CACHE_KEY = r"^[0-9a-f]{64}$"  # kdcore.cache.cache_key: safe as a file and object name


def cache_file(key: str) -> str:
    """An entry's file name in :data:`CACHE_DIR` (and in storage)."""
    return f"{key}.safetensors"


ErrorCode = Literal[
    "canceled",
    "diverged",
    "invalid_input",
    "out_of_memory",
    "no_gpu",
    "time_limit",
    "crashed",
    "internal",
]


@dataclass(frozen=True)
class Failure:
    """What an error code means to the worker.

    Attributes:
        input_at_fault: the input itself is the problem (a bad spec, file or a limit it
            broke), so an upload is marked ``invalid``; otherwise the check failed and the
            upload is retried.
        message: the user's message for a failed job, ``{}`` standing for the sandbox's
            text; None: the sandbox's text as it is. ``canceled`` and ``time_limit`` are worded
            by the runner, which knows who canceled and the limit.
    """

    input_at_fault: bool
    message: str | None = None


FAILURES: dict[ErrorCode, Failure] = {
    "canceled": Failure(input_at_fault=False),
    "diverged": Failure(input_at_fault=False),
    "invalid_input": Failure(input_at_fault=True),
    "out_of_memory": Failure(
        input_at_fault=True,
        message="the training process ran out of memory ({}); use a smaller batch size "
        "or model, or ask the operator to raise KDSERVE_SANDBOX_MEMORY_MB",
    ),
    "no_gpu": Failure(
        input_at_fault=True,
        message="this job asks for a CUDA GPU, but the worker that ran it has none ({}); "
        'submit it with "device": "auto" (a GPU where the worker has one) or "cpu", or ask '
        "the operator for a GPU worker",
    ),
    "time_limit": Failure(input_at_fault=True),
    "crashed": Failure(input_at_fault=False),
    "internal": Failure(input_at_fault=False, message="internal error: {}"),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Model):
    memory_mb: int = Field(ge=0)  # address space (RLIMIT_AS); 0: no limit (GPU workers)
    file_mb: int = Field(ge=0)  # largest file the child may write (RLIMIT_FSIZE); 0: none
    threads: int = Field(ge=0)  # torch intra-op threads; 0: torch's default


CODE_FORMATS = ("torchscript", "export")  # kdcore.weights formats that carry a program


class TeacherInput(_Model):
    path: str  # relative to the child's folder
    arch: ArchSpec | None = None
    allow_code: bool = False
    # Set when the operator enabled code checkpoints but this worker cannot confine them:
    # the child refuses a code checkpoint with this message (kdcore's own would say they
    # are disabled). The child, not the worker, looks at the file: parsing it is risky too.
    code_refusal: str | None = None


class CacheInput(_Model):
    """Use the worker's teacher cache; ``tenant`` goes into every key
    (:attr:`kdcore.cache.CacheKey.tenant`), so tenants never share an entry."""

    tenant: str = Field(min_length=1, max_length=64)
    # FitNets hint maps are cached only when their entry fits (a memory budget in the child).
    entry_max_bytes: int = Field(default=CACHE_ENTRY_MAX_BYTES, ge=0)


class DistillRequest(_Model):
    """Train a student: ``kdcore.pipeline.run``, writing into ``out/``; with ``cache``, the
    teacher's outputs come from (or go to) the worker's cache (:class:`CacheMessage`)."""

    op: Literal["distill"] = "distill"
    limits: Limits
    student: ArchSpec
    config: DistillConfig
    data: str
    val: str | None = None
    teacher: TeacherInput | None = None
    formats: list[str]
    cache: CacheInput | None = None


class TeacherRequest(_Model):
    """Load a teacher into its architecture and describe it (upload validation)."""

    op: Literal["teacher"] = "teacher"
    limits: Limits
    teacher: TeacherInput
    input_shape: list[int]
    num_classes: int


class DatasetRequest(_Model):
    """Load a dataset archive and describe it (upload validation)."""

    op: Literal["dataset"] = "dataset"
    limits: Limits
    path: str
    max_members: int = Field(ge=1)  # kdcore.data.load_dataset's: entries of an archive


Request = Annotated[DistillRequest | TeacherRequest | DatasetRequest, Field(discriminator="op")]


class ProgressMessage(_Model):
    type: Literal["progress"] = "progress"
    progress: dict[str, Any]  # the fields of kdcore.train.Progress


class ResultMessage(_Model):
    type: Literal["result"] = "result"
    result: dict[str, Any]


class ErrorMessage(_Model):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str = Field(max_length=4000)


class CacheMessage(_Model):
    """The child asks the worker for an entry, hands it one, or reports one corrupt."""

    type: Literal["cache"] = "cache"
    action: Literal["get", "put", "discard"]
    key: str = Field(pattern=CACHE_KEY)


Message = Annotated[
    ProgressMessage | ResultMessage | ErrorMessage | CacheMessage, Field(discriminator="type")
]


class TeacherResult(_Model):
    format: str
    layers: list[dict[str, Any]]
    params: int
    macs: int | None


class DatasetResult(_Model):
    samples: int
    input_shape: list[int]
    classes: list[str]


_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)


def parse_message(line: bytes) -> ProgressMessage | ResultMessage | ErrorMessage | CacheMessage:
    """Validate one line from the child.

    Raises:
        pydantic.ValidationError: not a message of this protocol.
    """
    return _MESSAGE.validate_json(line)
