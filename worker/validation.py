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
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore, StorageError
from store.db import transaction
from store.models import AssetStatus, DatasetRecord, Teacher
from store.repositories.assets import AssetRepository
from store.settings import Settings
from worker.files import download, local_name, work_dir
from worker.retry import DB_ERRORS, STORAGE_ERRORS, Retries, retrying
from worker.sandbox import SandboxFailed, run_in_sandbox
from worker.sandbox.policy import isolation_for, limits_for, teacher_input
from worker.sandbox.protocol import (
    DatasetRequest,
    DatasetResult,
    TeacherRequest,
    TeacherResult,
)

log = logging.getLogger(__name__)


def validate_teacher(
    teacher_id: str,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    store: BlobStore,
    retries: Retries = Retries(),
) -> AssetStatus | None:
    """Validate a teacher upload; returns the status written, or None if there was nothing
    to do (unknown id, or no longer ``validating``)."""
    row_id = _parse_id(teacher_id, "teacher")
    if row_id is None:
        return None
    with sessions() as session:
        row = AssetRepository(session).teacher_with_blob(row_id)
    if row is None or row.status != AssetStatus.validating:
        return None

    assert row.blob is not None  # validating rows always have their file
    with work_dir(settings, f"teacher-{row_id}-") as tmp:
        box = tmp / "box"
        (box / "in").mkdir(parents=True)
        release = False
        try:
            download(store, row.blob.uri, box / "in" / "weights", delays=retries.storage)
        except StorageError as exc:
            values = _storage_failed(exc)
        else:
            try:
                request = TeacherRequest(
                    limits=limits_for(settings),
                    teacher=teacher_input(settings, "in/weights", row.arch),
                    input_shape=list(row.input_shape),
                    num_classes=row.num_classes,
                )
                result = TeacherResult.model_validate(_sandboxed(request, box, tmp, settings))
            except _Refused as exc:  # the loader's verdict on the file: it goes
                values, release = {"status": AssetStatus.invalid, "error": str(exc)}, True
            except ValueError as exc:
                values = {"status": AssetStatus.invalid, "error": str(exc)}
            except Exception as exc:
                log.exception("validating teacher %s failed", row_id)
                values = _internal(exc)
            else:
                values = {"status": AssetStatus.ready, "error": None, **result.model_dump()}
    return _write(sessions, store, retries, Teacher, row_id, values, release=release)


def validate_dataset(
    dataset_id: str,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    store: BlobStore,
    retries: Retries = Retries(),
) -> AssetStatus | None:
    """Validate a dataset upload; returns the status written, or None if there was nothing
    to do."""
    row_id = _parse_id(dataset_id, "dataset")
    if row_id is None:
        return None
    with sessions() as session:
        row = AssetRepository(session).dataset_with_blob(row_id)
    if row is None or row.status != AssetStatus.validating:
        return None

    assert row.blob is not None  # validating rows always have their file
    with work_dir(settings, f"dataset-{row_id}-") as tmp:
        box = tmp / "box"
        (box / "in").mkdir(parents=True)
        release = False
        # The loader picks the format by suffix, so the file keeps the upload's name.
        name = f"in/{local_name(row.filename, 'dataset')}"
        try:
            download(store, row.blob.uri, box / name, delays=retries.storage)
        except StorageError as exc:
            values = _storage_failed(exc)
        else:
            try:
                request = DatasetRequest(limits=limits_for(settings), path=name)
                result = DatasetResult.model_validate(_sandboxed(request, box, tmp, settings))
            except _Refused as exc:  # the loader's verdict on the file: it goes
                values, release = {"status": AssetStatus.invalid, "error": str(exc)}, True
            except ValueError as exc:
                values = {"status": AssetStatus.invalid, "error": str(exc)}
            except Exception as exc:
                log.exception("validating dataset %s failed", row_id)
                values = _internal(exc)
            else:
                values = {"status": AssetStatus.ready, "error": None, **result.model_dump()}
    return _write(sessions, store, retries, DatasetRecord, row_id, values, release=release)


class _Refused(Exception):
    """The check judged the file itself bad (unreadable, hostile, over a limit)."""


# Sandbox failures that are a verdict on the file. A crash or an internal error may be the
# machine's fault: the upload is marked invalid but keeps its file.
_VERDICTS = ("invalid_input", "out_of_memory", "time_limit")


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
        if exc.code in _VERDICTS:
            raise _Refused(f"the file could not be checked: {exc} ({exc.code})") from exc
        raise RuntimeError(f"{exc} ({exc.code})") from exc


def _write(
    sessions: sessionmaker[Session],
    store: BlobStore,
    retries: Retries,
    model: type[Teacher] | type[DatasetRecord],
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
            if model is Teacher:
                written = repo.finish_teacher(row_id, **values)
            else:
                written = repo.finish_dataset(row_id, **values)
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
