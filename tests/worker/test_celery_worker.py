"""End to end: a real ``celery -A worker.app worker`` process, started the way GPU workers are,
takes tasks sent by name through the embedded (SQLite) broker and runs them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.blobs import store_from_settings
from store.db import make_engine, make_sessionmaker
from store.models import AssetStatus, DatasetRecord, JobStatus
from store.queue import RUN_JOB, VALIDATE_DATASET, make_celery
from store.settings import Settings
from tests.kdcore.factories import image_data
from tests.worker.factories import Env, create_dataset, create_world, npz_bytes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    # kombu's SQLAlchemy transport (the embedded broker) uses a loader SQLAlchemy 2.1 deprecates.
    pytest.mark.filterwarnings("ignore:.*noload.*:sqlalchemy.exc.SADeprecationWarning"),
]


@pytest.fixture
def embedded(sqlite_template: Path, tmp_path: Path) -> Iterator[Env]:
    """Everything under one home folder, as ``KDSERVE_HOME`` alone configures it."""
    settings = Settings(home=tmp_path / "home")
    settings.resolved_home.mkdir()
    shutil.copyfile(sqlite_template, settings.resolved_home / "kdserve.db")
    engine = make_engine(settings.db_url)
    yield Env(
        settings=settings, sessions=make_sessionmaker(engine), store=store_from_settings(settings)
    )
    engine.dispose()


@pytest.fixture
def worker_process(embedded: Env, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDSERVE_")}
    env |= {
        "KDSERVE_HOME": str(embedded.settings.resolved_home),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.app",
                "worker",
                "-Q",
                "gpu,default",
                "-c",
                "1",
                "--max-tasks-per-child",
                "1",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield log
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_worker_process_validates_a_dataset_and_runs_a_job(
    embedded: Env, worker_process: Path
) -> None:
    world = create_world(embedded)
    dataset_id = embedded.add(
        lambda s: (
            create_dataset(
                s,
                embedded.store,
                world.tenant_id,
                content=npz_bytes(image_data(seed=1)),
                status=AssetStatus.validating,
            ).id
        )
    )
    job_id = world.job(embedded)

    app = make_celery(embedded.settings)  # as the API sends them: by name, after the commit
    app.send_task(VALIDATE_DATASET, args=[str(dataset_id)])
    app.send_task(RUN_JOB, args=[str(job_id)])

    deadline = time.monotonic() + 180
    while True:
        job = embedded.job(job_id)
        with embedded.sessions() as s:
            dataset = s.get(DatasetRecord, dataset_id)
            assert dataset is not None
        if job.status.final and dataset.status != AssetStatus.validating:
            break
        if time.monotonic() > deadline:
            pytest.fail(
                "the worker did not finish in 180 s; its log:\n"
                + worker_process.read_text()[-5000:]
            )
        time.sleep(0.5)

    assert (job.status, job.error_message) == (JobStatus.succeeded, None)
    assert (dataset.status, dataset.samples) == (AssetStatus.ready, 192)
    # The worker's default export formats, all listed and stored.
    artifacts = embedded.artifacts(job_id)
    assert {"student.safetensors", "student.torchscript.pt", "student.pt2"} <= set(artifacts)
    assert all(embedded.store.exists(a.uri) for a in artifacts.values())
    assert uuid.UUID(str(job_id)) == job.id
