from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from store.blobs import PART_SIZE, BlobStore, LocalStore, StorageError, _LocalWriter, open_store
from tests.s3 import moto_s3


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "storage")
        return
    with moto_s3() as env:
        yield open_store(
            env["KDSERVE_STORAGE_URL"],
            endpoint_url=env["KDSERVE_S3_ENDPOINT_URL"],
            region="us-east-1",
            access_key_id="test",
            secret_access_key="test",
        )


def test_streamed_write_is_hashed_and_visible_only_after_commit(
    store: BlobStore, tmp_path: Path
) -> None:
    data = bytes(range(256)) * (PART_SIZE // 256 + 4097)  # more than one S3 part
    writer = store.writer("tenants/t/blobs/a")
    for i in range(0, len(data), 1 << 20):
        writer.write(data[i : i + (1 << 20)])
    uri = store.uri("tenants/t/blobs/a")
    assert not store.exists(uri)
    obj = writer.commit()
    assert obj.uri == uri
    assert obj.size == len(data)
    assert obj.sha256 == hashlib.sha256(data).hexdigest()
    assert store.exists(uri)
    store.download(uri, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    assert b"".join(store.iter_bytes(uri)) == data


def test_aborted_write_leaves_nothing(store: BlobStore) -> None:
    writer = store.writer("tenants/t/blobs/b")
    writer.write(b"x" * (PART_SIZE + 10))
    writer.abort()
    assert not store.exists(store.uri("tenants/t/blobs/b"))
    if isinstance(store, LocalStore):
        assert not [p for p in store.root.rglob("*") if p.is_file()]


def test_uploads_a_killed_process_left_unfinished_are_swept(store: BlobStore) -> None:
    # A writer that never commits nor aborts: its process was killed mid-upload.
    orphan = store.writer("tenants/t/blobs/orphan")
    orphan.write(b"x" * (PART_SIZE + 10))  # past one S3 part: a real multipart upload
    done = store.writer("tenants/t/blobs/done")
    done.write(b"kept")
    kept = done.commit()
    if isinstance(store, LocalStore):
        # Its writer is alive (holds the file's lock): kept, whatever its age.
        assert store.sweep_unfinished(older_than_s=-1) == 0
        assert isinstance(orphan, _LocalWriter)
        orphan._f.close()  # as the kernel does when the process dies: the lock goes
        assert store.sweep_unfinished(older_than_s=3600) == 1  # at once, though fresh
    else:  # a multipart upload's writer cannot be asked: by age (moto dates them 2010)
        assert store.sweep_unfinished(older_than_s=-1) == 1
    assert store.exists(kept.uri)
    assert not store.exists(store.uri("tenants/t/blobs/orphan"))
    if isinstance(store, LocalStore):
        assert [p.name for p in store.root.rglob("*") if p.is_file()] == ["done"]


def test_keys_cannot_escape_the_root(store: BlobStore) -> None:
    with pytest.raises(StorageError):
        store.writer("../outside")


def test_check_upload_and_delete(store: BlobStore) -> None:
    store.check()
    f = io.BytesIO(b"head:body")
    f.seek(5)  # uploads from the current position
    obj = store.upload_fileobj("k/f", f)
    assert (obj.size, obj.sha256) == (4, hashlib.sha256(b"body").hexdigest())
    assert b"".join(store.iter_bytes(obj.uri)) == b"body"
    store.delete(obj.uri)
    assert not store.exists(obj.uri)


def test_s3_presigned_url_downloads_the_object() -> None:
    with moto_s3() as env:
        store = open_store(
            env["KDSERVE_STORAGE_URL"],
            endpoint_url=env["KDSERVE_S3_ENDPOINT_URL"],
            region="us-east-1",
            access_key_id="test",
            secret_access_key="test",
        )
        obj = store.upload_fileobj("a/report.json", io.BytesIO(b'{"ok": true}'))
        url = store.presign(obj.uri, expires_s=60, filename="report.json")
        assert url is not None
        response = httpx.get(url)
        assert response.status_code == 200
        assert response.content == b'{"ok": true}'


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="file:// or s3://"):
        open_store("gs://bucket/x")


def test_presigned_urls_use_the_public_endpoint_when_set() -> None:
    with moto_s3() as env:
        store = open_store(
            env["KDSERVE_STORAGE_URL"],
            endpoint_url=env["KDSERVE_S3_ENDPOINT_URL"],
            region="us-east-1",
            access_key_id="test",
            secret_access_key="test",
            public_endpoint_url="https://s3.example.com",
        )
        obj = store.upload_fileobj("a/x", io.BytesIO(b"x"))
        url = store.presign(obj.uri, expires_s=60)
        assert url is not None
        assert url.startswith("https://s3.example.com/")
