"""Schemathesis against the service's own OpenAPI document.

The real app (``create_app``) runs in-process over ASGI, on a fresh PostgreSQL database whose
schema Alembic built and a real Redis broker, authenticated with a real key of a real tenant.
Each operation gets a bounded number of generated requests, valid and invalid (positive and
negative generation); no response may be a 5xx, and every response must match what the
document declares for it (status code, content type, headers, body schema).

Path parameters are sometimes replaced by the ids of rows seeded here (a ready teacher and
dataset, a queued job, a finished job with artifacts, metrics and a report), so the fuzzer
reaches the code behind the 404s too.

The document is built at import, without a database (``app.openapi()`` needs none), so pytest
lists one test per operation; the database it names is created by the module's fixture.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import schemathesis
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from sqlalchemy.orm import Session

from api.app import create_app
from store.blobs import store_from_settings
from store.db import make_engine, make_sessionmaker
from store.models import Artifact, JobStatus, MetricPoint, Sweep
from store.settings import Settings
from tests.api.factories import Tenancy, create_dataset, create_job, create_teacher, make_tenant
from tests.pg import SERVER, sqlalchemy_url

ROOT = Path(__file__).resolve().parents[2]
MLP = {"family": "mlp", "hidden": [8]}
REDIS_URL = "redis://127.0.0.1:6379/14"
# Generated requests per operation: ~30 s for all 26 on 2 cores (KDSERVE_FUZZ_EXAMPLES=300, about
# 2.5 min, for a longer hunt).
EXAMPLES = int(os.environ.get("KDSERVE_FUZZ_EXAMPLES", "50"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,  # a 405 whose `Allow` lists every method of the path
    ignored_auth,  # the same request without the key (or with a bad one) is a 401
]

DB_NAME = f"kdserve_fuzz_{uuid.uuid4().hex[:10]}"
HOME = Path(tempfile.gettempdir()) / DB_NAME
SETTINGS = Settings(
    home=HOME,
    database_url=sqlalchemy_url(DB_NAME),
    broker_url=REDIS_URL,
    storage_url=(HOME / "storage").as_uri(),
    queue=f"fuzz-{uuid.uuid4().hex}",
    # No worker validates the fuzzer's hundreds of uploads: without this, they would soon be
    # refused with 429 (a documented answer) before any of their checks ran.
    max_validating_uploads_per_tenant=1_000_000,
)
APP = create_app(SETTINGS)
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP  # requests go to the app in-process (ASGI); its lifespan starts on the first

# Filled by the fixture: a real tenant's headers and the seeded rows' ids by parameter name.
STATE: dict[str, Any] = {"headers": {}, "ids": {}}


@schema.hook
def flatmap_path_parameters(
    _context: Any, path_parameters: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """Each path parameter: the generated value or the id of a seeded row."""
    if not path_parameters:
        return st.just(path_parameters)
    return st.fixed_dictionaries(
        {k: st.sampled_from([v, *STATE["ids"].get(k, [])]) for k, v in path_parameters.items()}
    )


def _seed(s: Session, tenant: Tenancy) -> dict[str, list[str]]:
    store = store_from_settings(SETTINGS)
    teacher = create_teacher(s, tenant.id)
    dataset = create_dataset(s, tenant.id)
    queued = create_job(s, tenant.id, dataset_id=dataset.id, teacher_id=teacher.id)
    done = create_job(s, tenant.id, dataset_id=dataset.id, status=JobStatus.succeeded)
    for name, data in (
        ("report.json", json.dumps({"student": {"accuracy": 0.9}}).encode()),
        ("student.safetensors", b"\0" * 64),
    ):
        w = store.writer(f"tenants/{tenant.id}/jobs/{done.id}/artifacts/{name}")
        w.write(data)
        obj = w.commit()
        s.add(Artifact(job_id=done.id, name=name, uri=obj.uri, size=obj.size, sha256=obj.sha256))
    s.add(MetricPoint(job_id=done.id, key="val_accuracy", step=1, value=0.5))
    base = {"dataset_id": str(dataset.id), "student": MLP, "config": {"method": "scratch"}}
    sweep = Sweep(
        tenant_id=tenant.id, base=base, grid={"seed": [0, 1]}, metric="val_accuracy", points=[]
    )
    s.add(sweep)
    s.flush()
    point = create_job(s, tenant.id, dataset_id=dataset.id, sweep_id=sweep.id)
    done.sweep_id = sweep.id  # a sweep with a best point (whose artifacts are seeded above)
    sweep.points = [
        {"job_id": str(job.id), "overrides": {"seed": seed}}
        for seed, job in enumerate((done, point))
    ]
    return {
        "teacher_id": [str(teacher.id)],
        "dataset_id": [str(dataset.id)],
        "job_id": [str(queued.id), str(done.id)],
        "sweep_id": [str(sweep.id)],
        "name": ["report.json", "student.safetensors"],
    }


@pytest.fixture(scope="module", autouse=True)
def service() -> Iterator[None]:
    with psycopg.connect(SERVER + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    try:
        cfg = Config(str(ROOT / "alembic.ini"))
        cfg.cmd_opts = type("Opts", (), {"x": [f"url={SETTINGS.database_url}"]})()
        command.upgrade(cfg, "head")
        engine = make_engine(SETTINGS.db_url)
        sessions = make_sessionmaker(engine)
        tenant = make_tenant(sessions, "fuzzer")
        with sessions() as s, s.begin():
            STATE["ids"] = _seed(s, tenant)
        engine.dispose()
        STATE["headers"] = tenant.headers
        yield
    finally:
        shutdown_lifespans()  # the app's engine lets go of the database before it is dropped
        redis.Redis.from_url(REDIS_URL).flushdb()
        shutil.rmtree(HOME, ignore_errors=True)
        with psycopg.connect(SERVER + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests on every run: a CI failure reproduces locally
    suppress_health_check=list(HealthCheck),
)
def test_every_response_matches_the_schema_and_none_is_a_5xx(case: Any) -> None:
    case.call_and_validate(headers=STATE["headers"], checks=CHECKS)


# What the fuzzer found, pinned as plain requests (each was a response the document did not
# declare: a bare 400, or a 405 whose `Allow` left out a method of the path).


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS)) as c:
        c.headers.update(STATE["headers"])
        yield c


def test_a_multipart_upload_with_too_many_fields_is_a_422_that_says_so(client: TestClient) -> None:
    fields = {f"f{i}": "x" for i in range(12)}
    r = client.post("/v1/teachers", data=fields, files={"file": ("t.safetensors", b"\0" * 8)})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert "Too many fields" in r.json()["detail"]


def test_a_json_body_that_is_not_utf8_is_a_422(client: TestClient) -> None:
    r = client.post(
        "/v1/jobs", content=b"\x08\xffa\x11\xfe_", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["code"] == "invalid"


def test_a_405_lists_every_method_of_the_path(client: TestClient) -> None:
    r = client.put("/v1/teachers/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "DELETE"}
