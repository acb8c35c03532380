"""Dataset archives whose cost is in their entries, not their bytes, sent over HTTP to the
real processes (`kdserve api`, `kdserve worker`, S3 on loopback) with the member limit
lowered, so the archives stay small and the test fast."""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from PIL import Image

from client import KDServeClient
from tests.e2e.stack import Stack, flush_redis, service_env
from tests.pg import fresh_database
from tests.s3 import free_port, moto_s3

pytestmark = pytest.mark.slow

MAX_MEMBERS = 1000
REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of its own: its workers take "default"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("stack")
    with fresh_database("kdserve_e2e_archives") as db_url, moto_s3() as s3:
        # No job here needs the reaper: fewer of its tasks ahead of the validations.
        extra = s3 | {
            "KDSERVE_DATASET_MAX_MEMBERS": str(MAX_MEMBERS),
            "KDSERVE_REAP_INTERVAL_S": "60",
        }
        env = service_env(
            home, database_url=db_url, broker_url=REDIS_URL, port=free_port(), extra=extra
        )
        try:
            with Stack(home=home, env=env, port=int(env["KDSERVE_API_PORT"])).serving() as stack:
                yield stack
        finally:
            flush_redis(REDIS_URL)


@pytest.fixture(scope="module")
def alice(stack: Stack) -> KDServeClient:
    return stack.new_tenant("alice")


def image_tar_gz(path: Path, classes: tuple[str, ...], empty: int) -> Path:
    """Two 4x4 PNGs per class folder, then ``empty`` empty members."""
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    with tarfile.open(path, "w:gz") as tar:
        for cls in classes:
            for i in range(2):
                info = tarfile.TarInfo(f"{cls}/{i}.png")
                info.size = len(png.getvalue())
                tar.addfile(info, io.BytesIO(png.getvalue()))
        for i in range(empty):
            tar.addfile(tarfile.TarInfo(f"junk/{i:05d}"))
    return path


def stored(stack: Stack) -> list[str]:
    env = stack.env
    s3 = boto3.client(
        "s3",
        endpoint_url=env["KDSERVE_S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    bucket = env["KDSERVE_STORAGE_URL"].split("/")[2]
    found = s3.list_objects_v2(Bucket=bucket, Prefix="artifacts/tenants/").get("Contents", [])
    return [o["Key"] for o in found]


def test_an_archive_of_many_empty_members_ends_invalid_naming_the_limit_and_leaves_nothing(
    stack: Stack, alice: KDServeClient, tmp_path: Path
) -> None:
    # The archive scaled down: a few images and many empty members (headers only).
    # (kdcore/data/test_readers.py shows the same archive under the limit loads.)
    bomb = image_tar_gz(tmp_path / "bomb.tar.gz", ("cat", "dog"), empty=5 * MAX_MEMBERS)
    row = alice.wait_for("datasets", alice.upload_dataset(bomb)["id"], timeout=300)

    assert row["status"] == "invalid", row
    assert row["error"].startswith(f"bomb.tar.gz: more than max_members={MAX_MEMBERS} ")
    assert "send many small samples as one .npz file" in row["error"]
    assert row["samples"] is None
    # The refused archive's file is deleted (just after the row says invalid).
    deadline = time.monotonic() + 30
    while stored(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stored(stack) == []
    assert list((stack.home / "work").iterdir()) == []  # no scratch left on the worker


def test_a_class_folder_named_with_a_control_character_is_invalid(
    alice: KDServeClient, tmp_path: Path
) -> None:
    path = image_tar_gz(tmp_path / "names.tar.gz", ("cat", "dog\x1b[2J"), empty=0)
    row = alice.wait_for("datasets", alice.upload_dataset(path)["id"], timeout=300)
    assert row["status"] == "invalid"
    assert (
        "class name 'dog\\x1b[2J' holds the control or invisible character U+001B" in row["error"]
    )
    assert row["classes"] is None
