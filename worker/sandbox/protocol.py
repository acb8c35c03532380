"""What the worker and its sandboxed child say to each other.

The parent writes a :data:`Request` to ``request.json`` in the child's folder. The child
answers on a pipe, one JSON line per message: :class:`ProgressMessage` while it trains,
then one :class:`ResultMessage` or :class:`ErrorMessage`. After an ``epoch`` progress
message the child waits for the parent's ``ack`` line on a second pipe (the parent saves
the checkpoint meanwhile, so it never reads a file the child is rewriting); ``cancel`` on
that pipe asks the child to stop at the next step.

Everything the child sends is untrusted (a code checkpoint may have written to the pipe),
so the parent validates every line with these models and caps line lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from kdcore.contract import ArchSpec, DistillConfig

REQUEST_NAME = "request.json"
MAX_LINE_BYTES = 1 << 20  # a report is a few KB; anything longer is not ours
ACK = b"ack\n"
CANCEL = b"cancel\n"

ErrorCode = Literal[
    "canceled", "diverged", "invalid_input", "out_of_memory", "time_limit", "crashed", "internal"
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


class DistillRequest(_Model):
    """Train a student: ``kdcore.pipeline.run``, writing into ``out/``."""

    op: Literal["distill"] = "distill"
    limits: Limits
    student: ArchSpec
    config: DistillConfig
    data: str
    val: str | None = None
    teacher: TeacherInput | None = None
    formats: list[str]


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


Message = Annotated[ProgressMessage | ResultMessage | ErrorMessage, Field(discriminator="type")]


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


def parse_message(line: bytes) -> ProgressMessage | ResultMessage | ErrorMessage:
    """Validate one line from the child.

    Raises:
        pydantic.ValidationError: not a message of this protocol.
    """
    return _MESSAGE.validate_json(line)
