"""Checking uploads: a teacher must load into its architecture, a dataset must load.

Each check downloads the upload, runs the same ``kdcore`` loader a job will use, and writes
``ready`` (with what it learned: layers, parameter count, samples, classes) or ``invalid``
with the loader's message, which says what to fix. Both are no-ops unless the row is still
``validating``, so a redelivered task does nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from kdcore.data import load_dataset
from kdcore.inspection import inspect_model
from kdcore.weights import detect_format, load_model
from store.blobs import BlobStore, StorageError
from store.db import transaction
from store.models import AssetStatus
from store.repositories.assets import AssetRepository
from store.settings import Settings
from worker.files import download, local_name, work_dir
from worker.retry import DB_ERRORS, Retries, retrying

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

    input_shape = tuple(row.input_shape)
    with work_dir(settings, f"teacher-{row_id}-") as tmp:
        path = tmp / "weights"
        try:
            download(store, row.blob.uri, path, delays=retries.storage)
        except StorageError as exc:
            values = _storage_failed(exc)
        else:
            try:
                fmt = detect_format(path)
                model = load_model(
                    path,
                    row.arch,
                    input_shape,
                    row.num_classes,
                    allow_code=settings.allow_code_checkpoints,
                )
                layers, params, macs = _describe(model, input_shape)
            except ValueError as exc:  # WeightsError, CodeCheckpointRefused, SpecError
                values = {"status": AssetStatus.invalid, "error": str(exc)}
            except Exception as exc:
                log.exception("validating teacher %s failed", row_id)
                values = _internal(exc)
            else:
                values = {
                    "status": AssetStatus.ready,
                    "error": None,
                    "format": fmt,
                    "layers": layers,
                    "params": params,
                    "macs": macs,
                }
    return _write(sessions, retries, lambda repo: repo.finish_teacher(row_id, **values), values)


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

    with work_dir(settings, f"dataset-{row_id}-") as tmp:
        # The loader picks the format by suffix, so the file keeps the upload's name.
        path = tmp / local_name(row.filename, "dataset")
        try:
            download(store, row.blob.uri, path, delays=retries.storage)
        except StorageError as exc:
            values = _storage_failed(exc)
        else:
            try:
                data = load_dataset(path)
            except ValueError as exc:  # DataError
                values = {"status": AssetStatus.invalid, "error": str(exc)}
            except Exception as exc:
                log.exception("validating dataset %s failed", row_id)
                values = _internal(exc)
            else:
                values = {
                    "status": AssetStatus.ready,
                    "error": None,
                    "samples": len(data),
                    "input_shape": list(data.input_shape),
                    "classes": list(data.classes),
                }
    return _write(sessions, retries, lambda repo: repo.finish_dataset(row_id, **values), values)


def _describe(
    model: nn.Module, input_shape: tuple[int, ...]
) -> tuple[list[dict[str, Any]], int, int | None]:
    """Layers (path and per-sample output shape), parameter count and MACs."""
    summary = inspect_model(model, input_shape)
    layers = [{"path": layer.path, "shape": layer.shape} for layer in summary.layers]
    return layers, summary.params, summary.macs


def _write(
    sessions: sessionmaker[Session],
    retries: Retries,
    update: Callable[[AssetRepository], bool],
    values: dict[str, Any],
) -> AssetStatus | None:
    def once() -> bool:
        with transaction(sessions) as session:
            return update(AssetRepository(session))

    written = retrying(once, errors=DB_ERRORS, delays=retries.final_db, what="validation result")
    status: AssetStatus = values["status"]
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
