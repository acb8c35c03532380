"""Validating uploads (``teachers.validate``, ``datasets.validate``) against stored files."""

from __future__ import annotations

import io
import tarfile
import uuid
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from kdcore.inspection import count_params
from store.models import AssetStatus, DatasetRecord, Teacher
from store.repositories.assets import AssetRepository
from tests.kdcore.factories import cnn
from tests.worker.factories import (
    SHAPE,
    Env,
    create_dataset,
    create_teacher,
    create_tenant,
    state_dict_bytes,
    teacher_model,
)
from worker.retry import NO_WAIT
from worker.validation import validate_dataset, validate_teacher


def add_teacher(env: Env, content: bytes, **overrides: Any) -> uuid.UUID:
    return env.add(
        lambda s: (
            create_teacher(
                s,
                env.store,
                create_tenant(s).id,
                content=content,
                status=AssetStatus.validating,
                **overrides,
            ).id
        )
    )


def check_teacher(env: Env, teacher_id: uuid.UUID) -> tuple[AssetStatus | None, Teacher]:
    status = validate_teacher(
        str(teacher_id),
        settings=env.settings,
        sessions=env.sessions,
        store=env.store,
        retries=NO_WAIT,
    )
    with env.sessions() as s:
        row = s.get(Teacher, teacher_id)
        assert row is not None
        return status, row


def add_dataset(env: Env, content: bytes, filename: str) -> uuid.UUID:
    return env.add(
        lambda s: (
            create_dataset(
                s,
                env.store,
                create_tenant(s).id,
                content=content,
                filename=filename,
                status=AssetStatus.validating,
                samples=None,
                input_shape=None,
                classes=None,
            ).id
        )
    )


def check_dataset(env: Env, dataset_id: uuid.UUID) -> tuple[AssetStatus | None, DatasetRecord]:
    status = validate_dataset(
        str(dataset_id),
        settings=env.settings,
        sessions=env.sessions,
        store=env.store,
        retries=NO_WAIT,
    )
    with env.sessions() as s:
        row = s.get(DatasetRecord, dataset_id)
        assert row is not None
        return status, row


# -- teachers -------------------------------------------------------------------------------


def test_a_teacher_that_fits_its_architecture_is_ready_with_its_layers(env: Env) -> None:
    model = teacher_model()
    teacher_id = add_teacher(env, state_dict_bytes(model))
    status, row = check_teacher(env, teacher_id)
    assert status is row.status is AssetStatus.ready
    assert (row.format, row.error, row.params) == ("safetensors", None, count_params(model))
    assert row.macs is not None
    assert row.macs > 0
    assert row.layers is not None
    assert {"path": "conv1", "shape": [16, 8, 8]} in row.layers
    assert {"path": "fc", "shape": [4]} in row.layers

    # Delivered again: nothing to do, nothing changes.
    assert check_teacher(env, teacher_id)[0] is None


def test_a_state_dict_file_is_ready_too(env: Env) -> None:
    status, row = check_teacher(
        env, add_teacher(env, state_dict_bytes(teacher_model(), fmt="torch"))
    )
    assert (status, row.format) == (AssetStatus.ready, "state_dict")


def test_weights_of_another_architecture_are_invalid_naming_names_and_shapes(env: Env) -> None:
    teacher_id = add_teacher(env, state_dict_bytes(teacher_model(cnn(8))))
    status, row = check_teacher(env, teacher_id)
    assert status is row.status is AssetStatus.invalid
    assert row.error is not None
    assert "conv1.weight: file (8,3,3,3) vs architecture (16,3,3,3)" in row.error
    assert row.layers is None


def test_a_pickled_model_is_invalid_and_never_unpickled(env: Env) -> None:
    buf = io.BytesIO()
    torch.save(teacher_model(), buf)  # a whole nn.Module: loading it would run code
    status, row = check_teacher(env, add_teacher(env, buf.getvalue()))
    assert status is AssetStatus.invalid
    assert row.error is not None
    assert "holds pickled Python objects" in row.error
    assert "torch.save(model.state_dict()" in row.error


def test_a_torchscript_teacher_needs_code_checkpoints_enabled(env: Env) -> None:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(teacher_model().eval(), torch.zeros(2, *SHAPE)), buf)
    status, row = check_teacher(env, add_teacher(env, buf.getvalue(), arch=None))
    assert status is AssetStatus.invalid
    assert row.error is not None
    assert "KDSERVE_ALLOW_CODE_CHECKPOINTS" in row.error

    allowed = env.settings.model_copy(update={"allow_code_checkpoints": True})
    teacher_id = add_teacher(env, buf.getvalue(), arch=None)
    status = validate_teacher(
        str(teacher_id), settings=allowed, sessions=env.sessions, store=env.store, retries=NO_WAIT
    )
    assert status is AssetStatus.ready
    _, row = check_teacher(env, teacher_id)
    assert (row.format, row.layers, row.params) == (
        "torchscript",
        [],
        count_params(teacher_model()),
    )  # no hooks: no layers to list


def test_an_upload_missing_from_storage_is_invalid(env: Env) -> None:
    teacher_id = add_teacher(env, state_dict_bytes(teacher_model()))
    with env.sessions() as s:
        uploaded = AssetRepository(s).with_blob(Teacher, teacher_id)
        assert uploaded is not None
        assert uploaded.blob is not None
    env.store.delete(uploaded.blob.uri)
    status, row = check_teacher(env, teacher_id)
    assert status is AssetStatus.invalid
    assert row.error == "the uploaded file could not be read back from storage; upload it again"


# -- datasets -------------------------------------------------------------------------------


def npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def png_tar_gz(images: dict[str, int]) -> bytes:
    """A .tar.gz image folder: ``images`` maps class folder -> number of 4x4 PNGs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for cls, n in images.items():
            for i in range(n):
                png = io.BytesIO()
                Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(png, format="PNG")
                info = tarfile.TarInfo(f"train/{cls}/{i:03d}.png")
                info.size = len(png.getvalue())
                tar.addfile(info, io.BytesIO(png.getvalue()))
    return buf.getvalue()


def test_an_npz_dataset_is_ready_with_its_shape_and_classes(env: Env) -> None:
    content = npz(
        x=np.zeros((10, 3, 8, 8), np.uint8), y=np.arange(10) % 2, classes=np.array(["cat", "dog"])
    )
    dataset_id = add_dataset(env, content, "pets.npz")
    status, row = check_dataset(env, dataset_id)
    assert status is row.status is AssetStatus.ready
    assert (row.samples, row.input_shape, row.classes, row.error) == (
        10,
        [3, 8, 8],
        ["cat", "dog"],
        None,
    )
    assert check_dataset(env, dataset_id)[0] is None  # delivered again: a no-op


def test_an_image_folder_archive_keeps_its_suffix_and_loads(env: Env) -> None:
    status, row = check_dataset(
        env, add_dataset(env, png_tar_gz({"cat": 2, "dog": 3}), "my pets.tar.gz")
    )
    assert status is AssetStatus.ready
    assert (row.samples, row.input_shape, row.classes) == (5, [3, 4, 4], ["cat", "dog"])


@pytest.mark.parametrize(
    ("content", "filename", "message"),
    [
        (
            npz(x=np.zeros((4, 3))),
            "train.npz",
            "train.npz: missing array(s) y; found x; save with np.savez(path, x=..., y=...)",
        ),
        (b"a,b\n1,2\n", "table.csv", "table.csv: unsupported dataset format; supported: .npz"),
        (b"not a zip", "broken.zip", "broken.zip: not a readable zip archive"),
    ],
)
def test_a_bad_dataset_is_invalid_with_the_loaders_message(
    env: Env, content: bytes, filename: str, message: str
) -> None:
    status, row = check_dataset(env, add_dataset(env, content, filename))
    assert status is row.status is AssetStatus.invalid
    assert row.error is not None
    assert row.error.startswith(message)
    assert row.samples is None


def test_an_archive_of_too_many_members_is_invalid_and_its_file_released(env: Env) -> None:
    images = tarfile.open(fileobj=io.BytesIO(png_tar_gz({"cat": 2, "dog": 2})))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member in images.getmembers():
            tar.addfile(member, images.extractfile(member))
        for i in range(300):  # empty members: nothing to decode, each one a header to read
            tar.addfile(tarfile.TarInfo(f"train/junk/{i:04d}.txt"))
    dataset_id = add_dataset(env, buf.getvalue(), "many.tar.gz")
    limited = replace(env, settings=env.settings.model_copy(update={"dataset_max_members": 100}))

    status, row = check_dataset(limited, dataset_id)
    assert status is row.status is AssetStatus.invalid
    assert row.error is not None
    assert row.error.startswith("many.tar.gz: more than max_members=100 entries")
    assert (row.samples, row.blob_id) == (None, None)  # its file is deleted
