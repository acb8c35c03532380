"""Rows written before a bound existed still read back: the contract's ranges guard what
comes in, not what the database already holds."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from store.models import Sweep
from tests.api.factories import Tenancy, create_job


def test_a_job_stored_before_the_bounds_still_reads_back(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        job = create_job(
            s,
            alice.id,
            config={"method": "scratch", "weight_decay": 1e308, "milestones": [0.5] * 200},
            student={"family": "resnet", "depth": 600_002},
        )
        job_id = str(job.id)
    r = client.get(f"/v1/jobs/{job_id}", headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["weight_decay"] == 1e308
    listed = client.get("/v1/jobs", headers=alice.headers)
    assert listed.status_code == 200, listed.text
    assert [j["id"] for j in listed.json()["items"]] == [job_id]


def test_a_sweep_stored_before_the_bounds_still_reads_back(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        job = create_job(s, alice.id)
        base = {
            "dataset_id": str(job.dataset_id),
            "student": {"family": "mlp", "hidden": [8]},
            "config": {"method": "scratch", "weight_decay": 1e308},
        }
        sweep = Sweep(
            tenant_id=alice.id, base=base, grid={"seed": [0]}, metric="val_accuracy", points=[]
        )
        s.add(sweep)
        s.flush()
        sweep_id = str(sweep.id)
    r = client.get(f"/v1/sweeps/{sweep_id}", headers=alice.headers)
    assert r.status_code == 200, r.text
    assert r.json()["base"]["config"]["weight_decay"] == 1e308
