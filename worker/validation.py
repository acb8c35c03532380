"""Checking uploads: a teacher must load into its architecture, a dataset must load.

Each check downloads the upload and runs the same ``kdcore`` loader a job will use, in the
job sandbox (:mod:`worker.sandbox`: an archive bomb or a hostile checkpoint meets the same
limits and walls as a job), and writes ``ready`` (with what it learned: layers, parameter
count, samples, classes) or ``invalid`` with the loader's message, which says what to fix.
When the loader refuses the file (unreadable, hostile, over a limit), the file is deleted
from storage (unless another upload shares it), so it neither lingers nor counts against the
tenant's quota; its row keeps the message. A check that fails for the machine's reasons (a
crash, storage down) marks the upload invalid but keeps its file. Both are
no-ops unless the row is still ``validating``, so a redelivered task does nothing.

One driver (:func:`validate`) checks both kinds; a :class:`Check` names what differs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic

from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore, StorageError
from store.db import transaction
from store.models import AssetStatus, DatasetRecord, Teacher
from store.repositories.assets import AssetRepository
from store.repositories.catalog import Upload, UploadModel
from store.settings import Settings
from worker.files import download, local_name, work_dir
from worker.retry import DB_ERRORS, STORAGE_ERRORS, Retries, retrying
from worker.sandbox import SandboxFailed, run_in_sandbox
from worker.sandbox.policy import isolation_for, limits_for, teacher_input
from worker.sandbox.protocol import (
    FAILURES,
    DatasetRequest,
    DatasetResult,
    TeacherRequest,
    TeacherResult,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check(Generic[Upload]):
    """What differs between checking a teacher and a dataset: the row, where its file goes
    in the sandbox, and the loader's request and result."""

    model: type[Upload]
    what: str
    file: Callable[[Upload], str]  # the path in the sandbox folder, relative
    request: Callable[[Upload, str, Settings], TeacherRequest | DatasetRequest]
    result: type[TeacherResult] | type[DatasetResult]


def validate(
    check: Check[Upload],
    row_id: str,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    store: BlobStore,
    retries: Retries = Retries(),
) -> AssetStatus | None:
    """Validate an upload; returns the status written, or None if there was nothing to do
    (unknown id, or no longer ``validating``)."""
    parsed = _parse_id(row_id, check.what)
    if parsed is None:
        return None
    with sessions() as session:
        row = AssetRepository(session).with_blob(check.model, parsed)
    if row is None or row.status != AssetStatus.validating:
        return None

    assert row.blob is not None  # validating rows always have their file
    with work_dir(settings, f"{check.what}-{parsed}-") as tmp:
        box = tmp / "box"
        (box / "in").mkdir(parents=True)
        release = False
        path = check.file(row)
        try:
            download(store, row.blob.uri, box / path, delays=retries.storage)
        except StorageError as exc:
            values = _storage_failed(exc)
        else:
            try:
                request = check.request(row, path, settings)
                result = check.result.model_validate(_sandboxed(request, box, tmp, settings))
            except _Refused as exc:  # the loader's verdict on the file: it goes
                values, release = {"status": AssetStatus.invalid, "error": str(exc)}, True
            except ValueError as exc:
                values = {"status": AssetStatus.invalid, "error": str(exc)}
            except Exception as exc:
                log.exception("validating %s %s failed", check.what, parsed)
                values = _internal(exc)
            else:
                values = {"status": AssetStatus.ready, "error": None, **result.model_dump()}
    return _write(sessions, store, retries, check.model, parsed, values, release=release)


def _teacher_request(row: Teacher, path: str, settings: Settings) -> TeacherRequest:
    return TeacherRequest(
        limits=limits_for(settings),
        teacher=teacher_input(settings, path, row.arch),
        input_shape=list(row.input_shape),
        num_classes=row.num_classes,
    )


def _dataset_file(row: DatasetRecord) -> str:
    # The loader picks the format by suffix, so the file keeps the upload's name.
    return f"in/{local_name(row.filename, 'dataset')}"


def _dataset_request(row: DatasetRecord, path: str, settings: Settings) -> DatasetRequest:
    return DatasetRequest(
        limits=limits_for(settings), path=path, max_members=settings.dataset_max_members
    )


TEACHERS = Check(
    Teacher,
    "teacher",
    file=lambda _row: "in/weights",
    request=_teacher_request,
    result=TeacherResult,
)
DATASETS = Check(
    DatasetRecord, "dataset", file=_dataset_file, request=_dataset_request, result=DatasetResult
)
validate_teacher = partial(validate, TEACHERS)
validate_dataset = partial(validate, DATASETS)


class _Refused(Exception):
    """The check judged the file itself bad (unreadable, hostile, over a limit)."""


def _sandboxed(
    request: TeacherRequest | DatasetRequest, box: Path, tmp: Path, settings: Settings
) -> dict[str, Any]:
    """Run the check in the sandbox.

    Raises:
        _Refused: the upload is invalid (the message says what to fix) or broke a limit.
        RuntimeError: the check itself failed.
    """
    try:
        return run_in_sandbox(
            request,
            box,
            isolation=isolation_for(settings),
            time_limit_s=settings.validation_time_limit_s,
            log_path=tmp / "sandbox.log",
        )
    except SandboxFailed as exc:
        if exc.code == "invalid_input":
            raise _Refused(str(exc)) from exc
        # A verdict on the file (FAILURES); a crash or an internal error may be the
        # machine's fault: the upload is marked invalid but keeps its file.
        if FAILURES[exc.code].input_at_fault:
            raise _Refused(f"the file could not be checked: {exc} ({exc.code})") from exc
        raise RuntimeError(f"{exc} ({exc.code})") from exc


def _write(
    sessions: sessionmaker[Session],
    store: BlobStore,
    retries: Retries,
    model: UploadModel,
    row_id: uuid.UUID,
    values: dict[str, Any],
    *,
    release: bool,
) -> AssetStatus | None:
    """Write the result; with ``release`` (a verdict against the file) the upload also lets
    go of its file (deleted after the commit: a failed delete leaves an unlisted object,
    never a listed row without one)."""
    status: AssetStatus = values["status"]

    def once() -> tuple[bool, str | None]:
        with transaction(sessions) as session:
            repo = AssetRepository(session)
            written = repo.finish(model, row_id, **values)
            drop = written and release and status == AssetStatus.invalid
            return written, repo.release_blob(model, row_id) if drop else None

    written, orphan = retrying(
        once, errors=DB_ERRORS, delays=retries.final_db, what="validation result"
    )
    if orphan is not None:
        try:
            store.delete(orphan)
        except STORAGE_ERRORS as exc:
            log.warning("could not delete the invalid upload %s (%s)", orphan, exc)
    return status if written else None


def _storage_failed(exc: StorageError) -> dict[str, Any]:
    log.error("could not read an upload from storage: %s", exc)
    return {
        "status": AssetStatus.invalid,
        "error": "the uploaded file could not be read back from storage; upload it again",
    }


def _internal(exc: Exception) -> dict[str, Any]:
    return {
        "status": AssetStatus.invalid,
        "error": f"internal error while validating: {type(exc).__name__}",
    }


def _parse_id(value: str, what: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        log.error("ignoring a %s task for %r: not a UUID", what, value)
        return None
