"""Hostile uploads over HTTP (issue 4, "Bad input"): each is refused with a problem+json that
says what to fix, and leaves no partial object or row behind.

Content problems (a malicious pickle, corrupt or mismatched checkpoints, archives that try to
escape or explode, bad labels) are found by the worker's validation: the test uploads over
HTTP, runs the real ``worker.validation`` function in-process, then reads the verdict and tries
to use the upload over HTTP. Request-level problems are refused by the API itself; they are in
``test_bad_requests.py``.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save as safetensors_bytes
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from kdcore.contract import parse_arch
from kdcore.models import build_model
from store.blobs import store_from_settings
from store.models import Blob, DatasetRecord, Teacher
from store.settings import Settings
from tests.api.factories import Tenancy, create_dataset, npz_bytes
from worker.retry import NO_WAIT
from worker.validation import validate_dataset, validate_teacher

PROBLEM = "application/problem+json"
MLP = {"family": "mlp", "hidden": [8]}
SHAPE = (1, 8, 8)  # what tests.api.factories.create_dataset holds, with 4 classes


def stored_files(settings: Settings) -> list[Path]:
    root = settings.resolved_home / "storage"
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".readyz")]


def assert_problem(r: Any, status: int, *needles: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    for needle in needles:
        assert needle in body["detail"], (needle, body["detail"])
    return body


def blobs_with(sessions: sessionmaker[Session], sha256: str) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).where(Blob.sha256 == sha256)) or 0)


# -- uploading and validating -------------------------------------------------------------


def upload_teacher(client: TestClient, who: Tenancy, content: bytes) -> dict[str, Any]:
    r = client.post(
        "/v1/teachers",
        files={"file": ("teacher.safetensors", content)},
        data={
            "arch": '{"family": "mlp", "hidden": [8]}',
            "input_shape": "1,8,8",
            "num_classes": "4",
        },
        headers=who.headers,
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def upload_dataset(
    client: TestClient, who: Tenancy, content: bytes, filename: str
) -> dict[str, Any]:
    r = client.post(
        f"/v1/datasets?filename={filename}",
        content=content,
        headers={**who.headers, "content-type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def validate(kind: str, row_id: str, settings: Settings, sessions: sessionmaker[Session]) -> None:
    check = validate_teacher if kind == "teachers" else validate_dataset
    check(
        row_id,
        settings=settings,
        sessions=sessions,
        store=store_from_settings(settings),
        retries=NO_WAIT,
    )


def assert_invalid_and_gone(
    client: TestClient,
    who: Tenancy,
    settings: Settings,
    sessions: sessionmaker[Session],
    kind: str,
    uploaded: dict[str, Any],
    message: str,
) -> None:
    """Validation marked the upload invalid with ``message``; its row stays visible with
    the error, its bytes and blob row are gone, and a job that uses it is refused."""
    r = client.get(f"/v1/{kind}/{uploaded['id']}", headers=who.headers)
    assert r.status_code == 200
    assert r.json()["status"] == "invalid"
    assert message in r.json()["error"]
    listed = client.get(f"/v1/{kind}", headers=who.headers).json()["items"]
    assert [row["status"] for row in listed if row["id"] == uploaded["id"]] == ["invalid"]

    with sessions() as s, s.begin():
        data = create_dataset(s, who.id)  # ready, 1x8x8, 4 classes; its blob is not stored
        ready_dataset = str(data.id)
    if kind == "teachers":
        body = {
            "teacher_id": uploaded["id"],
            "dataset_id": ready_dataset,
            "config": {"method": "kd"},
        }
        field = "teacher_id"
    else:
        body = {"dataset_id": uploaded["id"], "config": {"method": "scratch"}}
        field = "dataset_id"
    r = client.post("/v1/jobs", headers=who.headers, json={**body, "student": MLP})
    assert_problem(r, 422, f"{field}: ", "is invalid", message)

    assert blobs_with(sessions, uploaded["sha256"]) == 0, "the invalid upload's blob row is left"
    assert stored_files(settings) == [], "the invalid upload's bytes are left in storage"


# -- teachers -------------------------------------------------------------------------------


def mlp_weights(hidden: int = 8, classes: int = 4) -> bytes:
    torch.manual_seed(0)
    model = build_model(parse_arch({"family": "mlp", "hidden": [hidden]}), SHAPE, classes)
    return safetensors_bytes(model.state_dict())


class Touch:
    """Unpickling this creates ``marker``: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.slow  # validation runs kdcore in a sandboxed child process
def test_a_malicious_pickle_teacher_is_invalid_and_never_runs(
    client: TestClient,
    alice: Tenancy,
    settings: Settings,
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Touch(control)))
    assert control.exists()  # the payload is live: loading it unrestricted creates the file

    buf = io.BytesIO()
    torch.save({"fc1.weight": torch.zeros(8, 64), "x": Touch(marker)}, buf)
    uploaded = upload_teacher(client, alice, buf.getvalue())
    validate("teachers", uploaded["id"], settings, sessions)
    assert not marker.exists()
    assert_invalid_and_gone(
        client, alice, settings, sessions, "teachers", uploaded, "holds pickled Python objects"
    )
    assert not marker.exists()


@pytest.mark.slow  # validation runs kdcore in a sandboxed child process
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: mlp_weights()[: len(mlp_weights()) // 2], "truncated"),
        (lambda: b"\x00" * 64 + b"definitely not weights", "not a weights file kdserve can read"),
        (
            lambda: mlp_weights(hidden=6),
            "fc1.weight: file (6,64) vs architecture (8,64)",
        ),
    ],
    ids=["truncated", "garbage", "weights-of-another-architecture"],
)
def test_a_corrupt_or_mismatched_checkpoint_is_invalid_naming_the_problem(
    client: TestClient,
    alice: Tenancy,
    settings: Settings,
    sessions: sessionmaker[Session],
    content: Callable[[], bytes],
    message: str,
) -> None:
    uploaded = upload_teacher(client, alice, content())
    validate("teachers", uploaded["id"], settings, sessions)
    assert_invalid_and_gone(client, alice, settings, sessions, "teachers", uploaded, message)


# -- datasets -------------------------------------------------------------------------------


def npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def png(w: int = 4, h: int = 4) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h), 7).save(buf, format="PNG")
    return buf.getvalue()


def png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w`` x ``h`` pixels (decoders read the size from it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))


def tar(members: dict[str, bytes], mode: str = "w", extra: list[tarfile.TarInfo] = ()) -> bytes:  # type: ignore[assignment]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return buf.getvalue()


IMAGES = {f"{c}/{i}.png": png() for c in ("cat", "dog") for i in range(2)}


def zip_bomb() -> bytes:
    """A zip whose directory declares 9 GiB of image bytes, more than validation reads."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in IMAGES.items():
            zf.writestr(name, data)
        zf.writestr("dog/huge.png", b"\0" * 1024)
        zf.filelist[-1].file_size = 9 * 2**30  # what a bomb's directory honestly says
    return buf.getvalue()


def links_and_devices() -> list[tarfile.TarInfo]:
    infos = []
    for name, kind, target in [
        ("cat/passwd.png", tarfile.SYMTYPE, "/etc/passwd"),
        ("dog/hard.png", tarfile.LNKTYPE, "/etc/shadow"),
        ("cat/null.png", tarfile.CHRTYPE, ""),
        ("dog/fifo.png", tarfile.FIFOTYPE, ""),
    ]:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        infos.append(info)
    return infos


def _x(n: int = 4) -> Any:
    return np.zeros((n, 3), np.float32)


BAD_DATASETS: list[tuple[str, str, Callable[[], bytes], str]] = [
    ("labels-out-of-range", "d.npz",
     lambda: npz(x=_x(), y=np.array([0, 1, 2, 3]), classes=np.array(["a", "b", "c"])),
     "label 3 is out of range; labels must be in [0, 3)"),
    ("negative-label", "d.npz", lambda: npz(x=_x(), y=np.array([0, 1, -1, 1])),
     "label -1 is out of range"),
    ("one-class", "d.npz", lambda: npz(x=_x(), y=np.array([1, 1, 1, 1])),
     "only 1 distinct class"),
    ("x-y-lengths", "d.npz", lambda: npz(x=_x(), y=np.array([0, 1, 0])),
     "x has 4 samples but y has 3 labels"),
    ("nan", "d.npz", lambda: npz(x=np.array([[0.0], [np.nan], [1.0]]), y=np.array([0, 1, 0])),
     "NaN"),
    ("inf", "d.npz", lambda: npz(x=np.array([[0.0], [np.inf], [1.0]]), y=np.array([0, 1, 0])),
     "infinite"),
    ("pickled-npz", "d.npz",
     lambda: npz(x=_x(), y=np.array([0, 1, 0, 1]), classes=np.array(["a", 1], object)),
     "never unpickled"),
    ("truncated-npz", "d.npz", lambda: npz_bytes()[:300], "d.npz: not a readable .npz"),
    ("corrupt-zip", "d.zip", lambda: b"PK\x03\x04" + b"\xff" * 200, "d.zip: not a readable zip"),
    ("truncated-zip", "d.zip", lambda: tar_as_zip()[:150], "d.zip: not a readable zip"),
    ("truncated-tar-gz", "d.tar.gz", lambda: tar(IMAGES, "w:gz")[:-40],
     "d.tar.gz: not a readable tar archive, or corrupt or truncated"),
    ("zip-bomb", "d.zip", zip_bomb, "decompression bomb"),
    ("tar-dotdot", "d.tar", lambda: tar({**IMAGES, "cat/../../evil.png": png()}),
     "member 'cat/../../evil.png' has an absolute path or '..'"),
    ("tar-absolute", "d.tar", lambda: tar({**IMAGES, "/etc/cron.d/x.png": png()}),
     "member '/etc/cron.d/x.png' has an absolute path or '..'"),
    ("zip-dotdot", "d.zip", lambda: zip_of({**IMAGES, "../x.png": png()}),
     "member '../x.png' has an absolute path or '..'"),
    ("only-links-and-devices", "d.tar", lambda: tar({}, extra=links_and_devices()),
     "no PNG or JPEG images found"),
    ("absurd-image-size", "d.zip", lambda: zip_of({**IMAGES, "cat/0.png": png_header(5000, 5000)}),
     "'cat/0.png' is 5000x5000 = 25000000 pixels, over the limit"),
]  # fmt: skip


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_as_zip() -> bytes:
    return zip_of(IMAGES)


@pytest.mark.slow  # validation runs kdcore in a sandboxed child process
@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [case[1:] for case in BAD_DATASETS],
    ids=[case[0] for case in BAD_DATASETS],
)
def test_a_bad_dataset_is_invalid_naming_the_problem_and_leaves_nothing(
    client: TestClient,
    alice: Tenancy,
    settings: Settings,
    sessions: sessionmaker[Session],
    filename: str,
    content: Callable[[], bytes],
    message: str,
) -> None:
    uploaded = upload_dataset(client, alice, content(), filename)
    validate("datasets", uploaded["id"], settings, sessions)
    assert_invalid_and_gone(client, alice, settings, sessions, "datasets", uploaded, message)


@pytest.mark.slow  # validation runs kdcore in a sandboxed child process
def test_links_and_devices_in_an_archive_are_skipped_never_followed(
    client: TestClient, alice: Tenancy, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    uploaded = upload_dataset(client, alice, tar(IMAGES, extra=links_and_devices()), "d.tar")
    validate("datasets", uploaded["id"], settings, sessions)
    r = client.get(f"/v1/datasets/{uploaded['id']}", headers=alice.headers).json()
    assert (r["status"], r["samples"], r["classes"]) == ("ready", 4, ["cat", "dog"])


@pytest.mark.slow  # validation runs kdcore in a sandboxed child process
def test_an_invalid_upload_keeps_a_blob_that_a_ready_dataset_shares(
    client: TestClient, alice: Tenancy, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    data = npz_bytes()
    good = upload_dataset(client, alice, data, "good.npz")
    bad = upload_dataset(client, alice, data, "same-bytes.zip")  # an .npz is no image zip
    assert good["sha256"] == bad["sha256"]
    validate("datasets", good["id"], settings, sessions)
    validate("datasets", bad["id"], settings, sessions)
    assert client.get(f"/v1/datasets/{bad['id']}", headers=alice.headers).json()["status"] == (
        "invalid"
    )
    assert client.get(f"/v1/datasets/{good['id']}", headers=alice.headers).json()["status"] == (
        "ready"
    )
    assert blobs_with(sessions, good["sha256"]) == 1
    assert len(stored_files(settings)) == 1


def test_a_refused_upload_leaves_no_row(
    client: TestClient, alice: Tenancy, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Refusals before the row exists (bad arch, bad shape, wrong kind) keep nothing."""
    for r in (
        client.post(
            "/v1/teachers?input_shape=1,8,8&num_classes=4&arch=" + '{"family": "mlp"',
            content=mlp_weights(),
            headers={**alice.headers, "content-type": "application/octet-stream"},
        ),
        client.post(
            "/v1/teachers?input_shape=1,8,8&num_classes=1",
            content=mlp_weights(),
            headers={**alice.headers, "content-type": "application/octet-stream"},
        ),
        client.post("/v1/datasets", headers=alice.headers, files={"file": ("d.exe", b"MZ")}),
    ):
        assert r.status_code in (415, 422), r.text
        assert r.headers["content-type"] == PROBLEM
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Teacher)) == 0
        assert s.scalar(select(func.count()).select_from(DatasetRecord)) == 0
        assert s.scalar(select(func.count()).select_from(Blob)) == 0
    assert stored_files(settings) == []
