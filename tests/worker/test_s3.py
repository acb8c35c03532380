"""The worker on S3 storage (moto's server standing in for MinIO / AWS)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.blobs import S3Store, store_from_settings
from store.models import JobStatus
from store.settings import Settings
from tests.s3 import moto_s3
from tests.worker.factories import Db, Env, create_world
from worker.runner import Outcome


@pytest.fixture
def s3_env(sqlite_db: Db, tmp_path: Path) -> Iterator[Env]:
    with moto_s3() as s3:
        settings = Settings(
            home=tmp_path,
            database_url=sqlite_db.url,
            storage_url=s3["KDSERVE_STORAGE_URL"],
            s3_endpoint_url=s3["KDSERVE_S3_ENDPOINT_URL"],
            s3_access_key_id=s3["KDSERVE_S3_ACCESS_KEY_ID"],
            s3_secret_access_key=s3["KDSERVE_S3_SECRET_ACCESS_KEY"],
        )
        yield Env(
            settings=settings, sessions=sqlite_db.sessions, store=store_from_settings(settings)
        )


def test_a_job_reads_its_inputs_from_s3_and_publishes_its_artifacts_there(s3_env: Env) -> None:
    world = create_world(s3_env)
    job_id = world.job(
        s3_env,
        teacher_id=world.teacher_id,
        config={"method": "kd", "epochs": 1, "batch_size": 32, "device": "cpu"},
    )
    assert s3_env.run(job_id) is Outcome.succeeded
    assert s3_env.job(job_id).status == JobStatus.succeeded
    artifacts = s3_env.artifacts(job_id)
    assert isinstance(s3_env.store, S3Store)
    assert artifacts["student.safetensors"].uri == (
        f"s3://kdserve-test/artifacts/tenants/{world.tenant_id}/jobs/{job_id}/artifacts/"
        "student.safetensors"
    )
    for a in artifacts.values():
        assert hashlib.sha256(s3_env.read(a.uri)).hexdigest() == a.sha256
