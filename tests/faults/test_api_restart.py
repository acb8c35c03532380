"""The API process SIGKILLed while it streams a big teacher into storage: once it is back,
no half-written teacher is listed and no complete object was left under the tenant's
prefix; only the unfinished multipart upload remains, which storage's own cleanup of stale
uploads owns (MinIO drops them after 24 h; on AWS, a lifecycle rule
``AbortIncompleteMultipartUpload``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client import KDServeClient
from tests.e2e.stack import DIGITS, Stack
from tests.faults.servers import MotoS3, S3Faults

pytestmark = pytest.mark.slow

MiB = 1 << 20


def test_api_killed_mid_upload_lists_no_teacher_and_leaves_no_object(
    stack: Stack,
    alice: KDServeClient,
    s3_server: MotoS3,
    s3_faults: S3Faults,
    teacher_weights: Path,
) -> None:
    tenant_prefix = "artifacts/tenants/"
    before = set(s3_server.keys(tenant_prefix))
    # The second 8 MiB part of the upload: the API is well into the body when it dies.
    parts = iter(range(2))
    hold = s3_faults.hold(
        lambda m, k: m == "upload_part" and "/blobs/" in k and bool(next(parts, 1))
    )
    sent: list[BaseException | httpx.Response] = []

    def body() -> Iterator[bytes]:
        for _ in range(40):  # 40 MiB: a multipart upload of several parts
            yield b"\0" * MiB

    def upload() -> None:
        try:
            sent.append(
                httpx.post(
                    f"{stack.url}/v1/teachers",
                    params={"input_shape": "1,8,8", "num_classes": "10", "name": "big"},
                    content=body(),
                    headers={
                        "Authorization": f"Bearer {alice.api_key}",
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(40 * MiB),
                    },
                    timeout=60,
                )
            )
        except (httpx.TransportError, OSError) as exc:
            sent.append(exc)

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    hold.wait(60)
    stack.kill("api")
    hold.release()
    uploader.join(30)
    assert sent, "the upload never ended"
    assert not isinstance(sent[0], httpx.Response), sent[0]  # it died with the API

    stack.start_api()
    assert alice.list_teachers() == []
    new = set(s3_server.keys(tenant_prefix)) - before
    assert new == set(), f"objects left by the killed upload: {new}"
    pending = s3_server.pending_uploads(tenant_prefix)
    assert all("/blobs/" in k for k in pending), pending

    # A teacher uploads fine afterwards.
    t = alice.upload_teacher(
        teacher_weights,
        input_shape=(1, 8, 8),
        num_classes=10,
        arch=json.loads((DIGITS / "teacher.json").read_text()),
    )
    assert alice.wait_for("teachers", t["id"], timeout=120)["status"] == "ready"
    assert [x["id"] for x in alice.list_teachers()] == [t["id"]]
