"""Object storage behind one URL: ``file:///path`` (default) or ``s3://bucket/prefix``.

S3-compatible stores (AWS, MinIO; moto's server in the tests) go through boto3: the most
widely used S3 client, with multipart uploads, presigned URLs and ranged reads, and the
client moto is built to stand in for. The local backend is a few lines over the filesystem.

Writers stream: data is written in chunks as it arrives and hashed on the way; an object
gets its final name only when complete (a renamed temporary file locally, a completed
multipart upload on S3), so a reader never sees half an object.

What a killed writer leaves (a ``.partial`` file, an unfinished multipart upload) is removed
by :meth:`BlobStore.sweep_unfinished`, which the API runs at start. Locally, each writer holds
an exclusive ``flock`` on its ``.partial`` file until it commits or aborts, and the kernel
drops the lock when the process dies however it dies; so the sweep removes exactly the files
whose lock it can take: every one a dead process left, at once, and never one that another
live API or worker process sharing the folder is still writing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from store.settings import Settings

PART_SIZE = 8 * 1024 * 1024  # S3 parts must be >= 5 MiB (but the last)


class StorageError(RuntimeError):
    """Storage is unreachable or refused an operation."""


@dataclass(frozen=True)
class StoredObject:
    uri: str
    size: int
    sha256: str


class BlobWriter(ABC):
    """Receives chunks; ``commit`` makes the object visible, ``abort`` discards it."""

    def __init__(self) -> None:
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        self._write(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @abstractmethod
    def _write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> StoredObject: ...

    @abstractmethod
    def abort(self) -> None: ...


class BlobStore(ABC):
    """Keys are relative paths (``tenants/<id>/blobs/<id>``); URIs are absolute."""

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @abstractmethod
    def writer(self, key: str) -> BlobWriter: ...

    @abstractmethod
    def download(self, uri: str, dest: Path) -> None: ...

    @abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abstractmethod
    def delete(self, uri: str) -> None: ...

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError unless storage answers."""

    def local_path(self, uri: str) -> Path | None:
        """The file behind ``uri`` when storage is local (served with HTTP Range)."""
        return None

    def presign(self, uri: str, *, expires_s: int, filename: str | None = None) -> str | None:
        """A time-limited download URL when storage supports one."""
        return None

    def upload_fileobj(self, key: str, f: IO[bytes]) -> StoredObject:
        """Stream an open file (from its current position) into storage under ``key``."""
        writer = self.writer(key)
        try:
            while chunk := f.read(PART_SIZE):
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

    def iter_bytes(self, uri: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        raise NotImplementedError

    def sweep_unfinished(self, older_than_s: float) -> int:
        """Remove uploads a killed process left unfinished (never visible as objects);
        returns how many. Local files go as soon as their writer is gone (whatever their
        age); S3 multipart uploads, whose writer cannot be asked, once started over
        ``older_than_s`` ago."""
        return 0


# -- local folder ----------------------------------------------------------------------


class _LocalWriter(BlobWriter):
    def __init__(self, final: Path) -> None:
        super().__init__()
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self.tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
            self._f = self.tmp.open("xb")
            # Held until commit or abort, or this process's death: the sweep's sign of life.
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX)
            # A sweep may have taken the file between the open and the lock: start over.
            if _same_file(self.tmp, self._f.fileno()):
                break
            self._f.close()

    def _write(self, chunk: bytes) -> None:
        self._f.write(chunk)

    def commit(self) -> StoredObject:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.final)
        return StoredObject(self.final.as_uri(), self.size, self.sha256)

    def abort(self) -> None:
        self._f.close()
        self.tmp.unlink(missing_ok=True)


class LocalStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def uri(self, key: str) -> str:
        return self._path_of_key(key).as_uri()

    def _path_of_key(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"key {key!r} escapes the storage root")
        return path

    def _path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise StorageError(f"not a local storage URI: {uri}")
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"{uri} is outside the storage root")
        return path

    def writer(self, key: str) -> BlobWriter:
        return _LocalWriter(self._path_of_key(key))

    def download(self, uri: str, dest: Path) -> None:
        shutil.copyfile(self._path(uri), dest)

    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)

    def check(self) -> None:
        probe = self.root / f".readyz-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"storage folder {self.root} is not writable: {exc}") from exc

    def local_path(self, uri: str) -> Path | None:
        return self._path(uri)

    def sweep_unfinished(self, older_than_s: float) -> int:
        removed = 0
        for path in self.root.rglob(".*.partial"):
            try:
                # r+: on NFS, flock is emulated by fcntl locks, whose exclusive kind needs it.
                with path.open("r+b") as f:
                    try:
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its writer is alive
                    if _same_file(path, f.fileno()):  # not renamed into place meanwhile
                        path.unlink()
                        removed += 1
            except FileNotFoundError:  # finished or aborted meanwhile
                continue
        return removed

    def iter_bytes(self, uri: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        with self._path(uri).open("rb") as f:
            while data := f.read(chunk):
                yield data


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


# -- S3 ----------------------------------------------------------------------------------


class _S3Writer(BlobWriter):
    def __init__(self, store: S3Store, key: str) -> None:
        super().__init__()
        self.store, self.key = store, key
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _write(self, chunk: bytes) -> None:
        self._buf += chunk
        while len(self._buf) >= PART_SIZE:
            self._flush_part(bytes(self._buf[:PART_SIZE]))
            del self._buf[:PART_SIZE]

    def _flush_part(self, data: bytes) -> None:
        c, bucket = self.store.client, self.store.bucket
        try:
            if self._upload_id is None:
                self._upload_id = c.create_multipart_upload(Bucket=bucket, Key=self.key)["UploadId"]
            n = len(self._parts) + 1
            etag = c.upload_part(
                Bucket=bucket, Key=self.key, PartNumber=n, UploadId=self._upload_id, Body=data
            )["ETag"]
        except Exception as exc:  # botocore raises many types; all mean "storage failed"
            raise StorageError(f"S3 upload of {self.key} failed: {exc}") from exc
        self._parts.append({"PartNumber": n, "ETag": etag})

    def commit(self) -> StoredObject:
        c, bucket = self.store.client, self.store.bucket
        try:
            if self._upload_id is None:
                c.put_object(Bucket=bucket, Key=self.key, Body=bytes(self._buf))
            else:
                if self._buf:
                    self._flush_part(bytes(self._buf))
                c.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except StorageError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            raise StorageError(f"S3 upload of {self.key} failed: {exc}") from exc
        self._buf.clear()
        return StoredObject(f"s3://{self.store.bucket}/{self.key}", self.size, self.sha256)

    def abort(self) -> None:
        self._buf.clear()
        if self._upload_id is not None:
            try:
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self._upload_id
                )
            except Exception:  # best effort: lifecycle rules clean up what this misses
                pass
            self._upload_id = None


class S3Store(BlobStore):
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None,
        region: str,
        access_key_id: str | None,
        secret_access_key: str | None,
        public_endpoint_url: str | None = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")

        def client(endpoint: str | None) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name=region,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                    s3={"addressing_style": "path"},
                ),
            )

        self.client = client(endpoint_url)
        # Signing needs no connection: a second client signs for the address clients use.
        self._signer = client(public_endpoint_url) if public_endpoint_url else self.client

    def _key(self, key: str) -> str:
        if ".." in key.split("/") or key.startswith("/"):
            raise StorageError(f"key {key!r} escapes the storage prefix")
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _split(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or parsed.netloc != self.bucket:
            raise StorageError(f"{uri} is not in bucket {self.bucket}")
        return parsed.path.lstrip("/")

    def writer(self, key: str) -> BlobWriter:
        return _S3Writer(self, self._key(key))

    def download(self, uri: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._split(uri), str(dest))
        except Exception as exc:
            raise StorageError(f"could not download {uri}: {exc}") from exc

    def exists(self, uri: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._split(uri))
        except Exception:
            return False
        return True

    def delete(self, uri: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._split(uri))
        except Exception as exc:
            raise StorageError(f"could not delete {uri}: {exc}") from exc

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise StorageError(f"bucket {self.bucket} is not reachable: {exc}") from exc

    def presign(self, uri: str, *, expires_s: int, filename: str | None = None) -> str | None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._split(uri)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url: str = self._signer.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_s
        )
        return url

    def sweep_unfinished(self, older_than_s: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        removed = 0
        pages = self.client.get_paginator("list_multipart_uploads")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        return removed

    def iter_bytes(self, uri: str, chunk: int = 1 << 20) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._split(uri))["Body"]
        yield from body.iter_chunks(chunk)


def store_from_settings(settings: Settings) -> BlobStore:
    return open_store(
        settings.storage,
        endpoint_url=settings.s3_endpoint_url,
        public_endpoint_url=settings.s3_public_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=(
            settings.s3_secret_access_key.get_secret_value()
            if settings.s3_secret_access_key
            else None
        ),
    )


def open_store(url: str, **s3: Any) -> BlobStore:
    """The store for a storage URL; ``s3`` takes endpoint_url, region and credentials."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if len(parsed.netloc) < 3:
            raise ValueError(f"storage URL {url!r} needs a bucket name of 3+ characters")
        return S3Store(parsed.netloc, parsed.path, **s3)
    raise ValueError(f"storage URL must start with file:// or s3://, got {url!r}")
