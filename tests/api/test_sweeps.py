"""Sweeps through the API in-process, on Postgres and Redis: the grid's points and their
order, the 422s that name a bad grid value by its path, scratch points, the sweep-point
limit, tenancy, paging, cancel, idempotency, and the leaderboard read from metric points the
worker's own repository records."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from store.blobs import LocalStore
from store.models import Job, JobStatus, Sweep, utcnow
from store.repositories.runs import Claim, NewArtifact, RunRepository
from store.settings import Settings
from tests.api.conftest import REDIS_URL
from tests.api.factories import Tenancy, create_dataset, create_job, create_teacher
from tests.broker import queued

MLP = {"family": "mlp", "hidden": [8]}
HINT = {"teacher_layer": "relu1", "student_layer": "relu1", "epochs": 1}


@pytest.fixture
def ready(sessions: sessionmaker[Session], alice: Tenancy) -> dict[str, str]:
    with sessions() as s, s.begin():
        return {
            "dataset_id": str(create_dataset(s, alice.id).id),
            "teacher_id": str(create_teacher(s, alice.id).id),
        }


def _base(ready: dict[str, str], **config: Any) -> dict[str, Any]:
    return {
        **ready,
        "student": MLP,
        "config": {"method": "kd", "epochs": 2, "batch_size": 32, **config},
    }


def _submit(
    client: TestClient, who: Tenancy, headers: dict[str, str] | None = None, **body: Any
) -> Any:
    return client.post("/v1/sweeps", headers={**who.headers, **(headers or {})}, json=body)


def _rows(sessions: sessionmaker[Session], model: type[Any]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _jobs(client: TestClient, who: Tenancy, sweep: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        client.get(f"/v1/jobs/{p['job_id']}", headers=who.headers).json() for p in sweep["points"]
    ]


# -- submission ------------------------------------------------------------------------------


def test_submit_queues_one_job_per_point_in_grid_order(
    client: TestClient, alice: Tenancy, ready: dict[str, str], settings: Settings
) -> None:
    r = _submit(
        client,
        alice,
        base=_base(ready, temperature=3.0),
        grid={"alpha": [0.1, 0.5], "temperature": [2, 4]},
        name="t-and-a",
    )

    assert r.status_code == 202, r.text
    sweep = r.json()
    assert r.headers["location"] == f"/v1/sweeps/{sweep['id']}"
    assert sweep["status"] == "queued"
    assert sweep["metric"] == "val_accuracy"
    # temperature before alpha whatever the body's order; the last field varies fastest
    assert [p["overrides"] for p in sweep["points"]] == [
        {"temperature": 2, "alpha": 0.1},
        {"temperature": 2, "alpha": 0.5},
        {"temperature": 4, "alpha": 0.1},
        {"temperature": 4, "alpha": 0.5},
    ]
    assert [p["index"] for p in sweep["points"]] == [0, 1, 2, 3]
    assert sweep["counts"] == {
        "queued": 4,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "canceled": 0,
    }
    assert (sweep["leaderboard"], sweep["best_job_id"]) == ([], None)
    jobs = _jobs(client, alice, sweep)
    assert [(j["config"]["temperature"], j["config"]["alpha"]) for j in jobs] == [
        (2, 0.1),
        (2, 0.5),
        (4, 0.1),
        (4, 0.5),
    ]
    assert all(j["sweep_id"] == sweep["id"] and j["status"] == "queued" for j in jobs)
    assert all(j["config"]["epochs"] == 2 and j["teacher_id"] == ready["teacher_id"] for j in jobs)
    assert jobs[1]["name"] == "t-and-a [1] temperature=2.0 alpha=0.5"
    assert all(j["choices"] == {} for j in jobs)
    assert len(queued(REDIS_URL, settings.queue)) == 4


def test_hint_pairs_and_hint_epochs_keep_the_base_hint_fields_they_leave_out(
    client: TestClient, alice: Tenancy, ready: dict[str, str]
) -> None:
    base = _base(ready, method="fitnet", hint={**HINT, "lr": 0.001})
    grid = {
        "hint": [{"teacher_layer": "fc1", "student_layer": "fc1"}, HINT],
        "hint_epochs": [2, 3],
    }
    r = _submit(client, alice, base=base, grid=grid)

    assert r.status_code == 202, r.text
    sweep = r.json()
    assert [p["overrides"] for p in sweep["points"]] == [
        {"hint": {"teacher_layer": "fc1", "student_layer": "fc1"}, "hint_epochs": 2},
        {"hint": {"teacher_layer": "fc1", "student_layer": "fc1"}, "hint_epochs": 3},
        {"hint": HINT, "hint_epochs": 2},
        {"hint": HINT, "hint_epochs": 3},
    ]
    hints = [j["config"]["hint"] for j in _jobs(client, alice, sweep)]
    assert hints[0] == {"teacher_layer": "fc1", "student_layer": "fc1", "epochs": 2, "lr": 0.001}
    assert [h["epochs"] for h in hints] == [2, 3, 2, 3]
    assert sweep["grid"]["hint"][0] == {"teacher_layer": "fc1", "student_layer": "fc1"}


def test_scratch_adds_a_scratch_point_per_seed(
    client: TestClient, alice: Tenancy, ready: dict[str, str]
) -> None:
    base = _base(ready, method="fitnet", hint=HINT, augment="flip")
    r = _submit(
        client, alice, base=base, grid={"temperature": [2, 4], "seed": [0, 7]}, scratch=True
    )

    assert r.status_code == 202, r.text
    sweep = r.json()
    assert [p["overrides"] for p in sweep["points"]][-2:] == [
        {"method": "scratch", "seed": 0},
        {"method": "scratch", "seed": 7},
    ]
    assert len(sweep["points"]) == 6
    jobs = _jobs(client, alice, sweep)
    for job, seed in zip(jobs[-2:], (0, 7), strict=True):
        assert (job["method"], job["teacher_id"], job["config"]["hint"]) == ("scratch", None, None)
        assert job["config"]["seed"] == seed
        assert (job["config"]["epochs"], job["config"]["augment"]) == (2, "flip")
        assert job["dataset_id"] == ready["dataset_id"]
    # without a seed grid, one scratch point with the base's seed
    r = _submit(client, alice, base=base, grid={"temperature": [2]}, scratch=True)
    assert [p["overrides"] for p in r.json()["points"]] == [
        {"temperature": 2},
        {"method": "scratch", "seed": 0},
    ]


BAD_GRIDS = [
    # (id, base config changes, grid, other body fields, where, what the detail says)
    ("alpha over 1", {}, {"alpha": [0.5, 1.5]}, {}, ["grid", "alpha", 1], "<= 1"),
    ("lr zero", {}, {"lr": [0]}, {}, ["grid", "lr", 0], "greater than 0"),
    ("temperature empty", {}, {"temperature": []}, {}, ["grid", "temperature"], "at least 1 item"),
    ("twice", {}, {"temperature": [2, 2.0]}, {}, ["grid", "temperature"], "listed twice"),
    ("unknown field", {}, {"epochs": [1, 2]}, {}, ["grid", "epochs"], "unknown field"),
    ("negative seed", {}, {"seed": [1, -1]}, {}, ["grid", "seed", 1], "greater than or equal to 0"),
    ("hint on kd", {}, {"hint": [HINT]}, {}, ["grid", "hint"], 'applies to method "fitnet" only'),
    ("hint epochs on kd", {}, {"hint_epochs": [2]}, {}, ["grid", "hint_epochs"], "no hint"),
    ("hint epochs zero", {"method": "fitnet", "hint": HINT}, {"hint_epochs": [0]}, {},
     ["grid", "hint_epochs", 0], "greater than 0"),
    ("no such hint layer", {"method": "fitnet", "hint": HINT},
     {"hint": [HINT, {"teacher_layer": "relu", "student_layer": "relu1"}]}, {},
     ["grid", "hint", 1, "teacher_layer"], "nearest valid paths: relu1"),
    ("temperature of scratch", {"method": "scratch"}, {"temperature": [2]}, {"teacher_id": None},
     ["grid", "temperature"], "every point would train the same way"),
    ("scratch of scratch", {"method": "scratch"}, {"seed": [1, 2]},
     {"teacher_id": None, "scratch": True}, ["scratch"], "already"),
    ("nothing to rank by", {"val_split": 0}, {"seed": [1, 2]}, {},
     ["base", "config", "val_split"], "give base.val_dataset_id"),
    ("batch too large", {"batch_size": 1000}, {"seed": [1, 2]}, {},
     ["base", "config", "batch_size"], "larger than the 360 training samples"),
    ("metric", {}, {"seed": [1]}, {"metric": "loss"}, ["metric"], "val_accuracy"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "grid", "extra", "loc", "needle"),
    [c[1:] for c in BAD_GRIDS],
    ids=[c[0] for c in BAD_GRIDS],
)
def test_a_bad_grid_is_422_naming_the_field_and_creates_nothing(
    client: TestClient,
    alice: Tenancy,
    ready: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
    config: dict[str, Any],
    grid: dict[str, Any],
    extra: dict[str, Any],
    loc: list[str | int],
    needle: str,
) -> None:
    base = _base(ready, **config)
    body = {"base": {**base, **{k: v for k, v in extra.items() if k == "teacher_id"}}, "grid": grid}
    body |= {k: v for k, v in extra.items() if k != "teacher_id"}

    r = client.post("/v1/sweeps", headers=alice.headers, json=body)

    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    path = ".".join(map(str, loc))
    assert path in problem["detail"]
    assert needle in problem["detail"]
    if problem.get("errors"):
        assert loc in [e["loc"] for e in problem["errors"]]
    assert (_rows(sessions, Sweep), _rows(sessions, Job)) == (0, 0)
    assert len(queued(REDIS_URL, settings.queue)) == 0


def test_the_base_job_gets_the_checks_of_a_job_named_under_base(
    client: TestClient,
    alice: Tenancy,
    bob: Tenancy,
    ready: dict[str, str],
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as s, s.begin():
        theirs = str(create_dataset(s, bob.id).id)
    for base, status, needle in (
        ({**_base(ready), "dataset_id": theirs}, 422, f"base.dataset_id: no dataset {theirs}"),
        ({**_base(ready), "teacher_id": None}, 422, "base.teacher_id: method 'kd' needs a teacher"),
        (
            {**_base(ready), "student": {"family": "resnet", "depth": 9}},
            422,
            "base.student",
        ),
    ):
        r = _submit(client, alice, base=base, grid={"temperature": [2, 4]})
        assert r.status_code == status, r.text
        assert needle in r.json()["detail"]
    assert _rows(sessions, Job) == 0


# -- limits ----------------------------------------------------------------------------------


@pytest.fixture
def limited(settings: Settings, sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    """An app whose tenants may have 4 sweep points and 1 plain job queued or running."""
    small = settings.model_copy(
        update={"max_sweep_points_per_tenant": 4, "max_running_jobs_per_tenant": 1}
    )
    with TestClient(create_app(small)) as c:
        yield c


def test_sweep_points_have_a_limit_of_their_own(
    limited: TestClient, alice: Tenancy, ready: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    too_big = _submit(
        limited, alice, base=_base(ready), grid={"seed": [0, 1, 2]}, scratch=True, name="x"
    )
    assert too_big.status_code == 422
    assert "grid: 6 points is more than the 4 sweep points" in too_big.json()["detail"]
    assert too_big.json()["errors"][0]["loc"] == ["grid"]

    first = _submit(limited, alice, base=_base(ready), grid={"seed": [0, 1, 2]})
    assert first.status_code == 202, first.text
    # sweep points do not count against plain jobs, nor plain jobs against sweep points
    job = limited.post("/v1/jobs", headers=alice.headers, json=_base(ready))
    assert job.status_code == 202, job.text
    assert limited.post("/v1/jobs", headers=alice.headers, json=_base(ready)).status_code == 429
    assert _submit(limited, alice, base=_base(ready), grid={"seed": [5]}).status_code == 202

    over = _submit(limited, alice, base=_base(ready), grid={"seed": [8]})
    assert over.status_code == 429
    assert over.headers["retry-after"]
    assert "4 sweep points queued or running" in over.json()["detail"]
    assert "cancel" in over.json()["detail"]

    limited.post(f"/v1/sweeps/{first.json()['id']}/cancel", headers=alice.headers)
    assert _submit(limited, alice, base=_base(ready), grid={"seed": [8]}).status_code == 202


# -- reading, tenancy, paging, idempotency -----------------------------------------------------


def test_another_tenant_gets_404_everywhere(
    client: TestClient, alice: Tenancy, bob: Tenancy, ready: dict[str, str]
) -> None:
    sweep = _submit(client, alice, base=_base(ready), grid={"seed": [1, 2]}).json()
    base = f"/v1/sweeps/{sweep['id']}"
    for method, path in (
        ("GET", base),
        ("POST", f"{base}/cancel"),
        ("GET", f"{base}/artifacts"),
        ("GET", f"{base}/artifacts/student.safetensors"),
        ("GET", f"/v1/sweeps/{uuid.uuid4()}"),
        ("GET", "/v1/sweeps/not-an-id"),
    ):
        r = client.request(method, path, headers=bob.headers, follow_redirects=False)
        assert r.status_code == 404, (method, path)
        assert r.json()["code"] == "not_found"
    assert client.get("/v1/sweeps", headers=bob.headers).json()["items"] == []
    assert client.get(base, headers=alice.headers).status_code == 200


def test_list_is_newest_first_in_pages(
    client: TestClient, alice: Tenancy, ready: dict[str, str]
) -> None:
    made = [
        _submit(client, alice, base=_base(ready), grid={"seed": [i]}, name=f"s{i}").json()["id"]
        for i in range(3)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/sweeps", headers=alice.headers, params=params).json()
        assert len(page["items"]) <= 2
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]
    assert client.get("/v1/sweeps?cursor=garbage", headers=alice.headers).status_code == 422


def test_the_same_idempotency_key_returns_the_same_sweep(
    client: TestClient,
    alice: Tenancy,
    ready: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    body = {"base": _base(ready), "grid": {"temperature": [2, 4]}}
    key = {"Idempotency-Key": "sweep-1"}
    first = _submit(client, alice, headers=key, **body)
    again = _submit(client, alice, headers=key, **body)
    other = _submit(client, alice, **body)

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert [p["job_id"] for p in again.json()["points"]] == [
        p["job_id"] for p in first.json()["points"]
    ]
    assert other.json()["id"] != first.json()["id"]
    assert (_rows(sessions, Sweep), _rows(sessions, Job)) == (2, 4)
    assert len(queued(REDIS_URL, settings.queue)) == 4

    changed = _submit(client, alice, headers=key, base=body["base"], grid={"temperature": [2, 8]})
    assert changed.status_code == 422
    assert changed.json()["code"] == "idempotency_key_reused"
    assert (_rows(sessions, Sweep), _rows(sessions, Job)) == (2, 4)


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_stops_every_point_not_final_then_409(
    client: TestClient, alice: Tenancy, ready: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    sweep = _submit(client, alice, base=_base(ready), grid={"seed": [1, 2, 3]}).json()
    running, done, queued = (uuid.UUID(p["job_id"]) for p in sweep["points"])
    _run(sessions, running, [])
    _run(sessions, done, [{"val_accuracy": 0.5, "val_nll": 1.0}], end=JobStatus.succeeded)

    r = client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=alice.headers)

    assert r.status_code == 202, r.text
    after = r.json()
    assert [p["status"] for p in after["points"]] == ["running", "succeeded", "canceled"]
    assert after["status"] == "running"
    job = client.get(f"/v1/jobs/{running}", headers=alice.headers).json()
    assert job["cancel_requested"] is True
    again = client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=alice.headers)
    assert again.status_code == 202  # the running point has not stopped yet
    _finish(sessions, running, JobStatus.canceled)
    final = client.get(f"/v1/sweeps/{sweep['id']}", headers=alice.headers).json()
    assert final["status"] == "succeeded"  # every point final and one succeeded
    assert final["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "canceled": 2,
    }
    assert client.post(f"/v1/sweeps/{sweep['id']}/cancel", headers=alice.headers).status_code == 409

    queued_only = _submit(client, alice, base=_base(ready), grid={"seed": [4, 5]}).json()
    r = client.post(f"/v1/sweeps/{queued_only['id']}/cancel", headers=alice.headers)
    assert (r.json()["status"], r.json()["counts"]["canceled"]) == ("canceled", 2)


# -- leaderboard and the best student ---------------------------------------------------------


def test_a_finished_points_figures_are_those_of_the_epoch_its_job_exported(
    client: TestClient, alice: Tenancy, ready: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    sweep = _submit(client, alice, base=_base(ready), grid={"temperature": [2, 4]}).json()
    first, second = (uuid.UUID(p["job_id"]) for p in sweep["points"])
    epochs = [{"val_accuracy": 0.81, "val_nll": 0.6}, {"val_accuracy": 0.80, "val_nll": 0.4}]
    for job in (first, second):
        _run(sessions, job, epochs)
    # The engine exported epoch 2 of the first (within the noise of epoch 1's accuracy);
    # the second reports no export (an older worker): its best epoch stands in.
    _finish(sessions, first, JobStatus.succeeded, metrics={"exported_epoch": 2})
    _finish(sessions, second, JobStatus.succeeded)

    points = client.get(f"/v1/sweeps/{sweep['id']}", headers=alice.headers).json()["points"]
    assert [(p["best_epoch"], p["val_accuracy"]) for p in points] == [(2, 0.80), (1, 0.81)]


@pytest.mark.parametrize(
    ("metric", "order", "second"),
    [
        # the second point of the leaderboard: its best epoch by the sweep's metric
        ("val_accuracy", [0, 1], {"val_accuracy": 0.8, "val_nll": 0.5, "best_epoch": 1}),
        ("val_nll", [1, 0], {"val_accuracy": 0.9, "val_nll": 0.6, "best_epoch": 2}),
    ],
)
def test_the_leaderboard_ranks_succeeded_points_by_their_best_final_stage_epoch(
    client: TestClient,
    alice: Tenancy,
    ready: dict[str, str],
    sessions: sessionmaker[Session],
    settings: Settings,
    metric: str,
    order: list[int],
    second: dict[str, Any],
) -> None:
    base = _base(ready, method="fitnet", hint=HINT)  # step 1 is the hint stage
    r = _submit(client, alice, base=base, grid={"temperature": [1, 2, 4, 8]}, metric=metric)
    sweep = r.json()
    ids = [uuid.UUID(p["job_id"]) for p in sweep["points"]]
    url = f"/v1/sweeps/{sweep['id']}"
    none_yet = client.get(f"{url}/artifacts", headers=alice.headers)
    assert none_yet.status_code == 404
    assert "no succeeded point yet" in none_yet.json()["detail"]

    hint_epoch = {"val_accuracy": 0.99, "val_nll": 0.01}  # not the final stage: never counts
    _run(
        sessions,
        ids[0],
        [hint_epoch, {"val_accuracy": 0.6, "val_nll": 0.7}, {"val_accuracy": 0.9, "val_nll": 0.6}],
        end=JobStatus.succeeded,
        store=LocalStore(settings.resolved_home / "storage"),
    )
    _run(
        sessions,
        ids[1],
        [hint_epoch, {"val_accuracy": 0.8, "val_nll": 0.5}, {"val_accuracy": 0.7, "val_nll": 0.3}],
        end=JobStatus.succeeded,
        store=LocalStore(settings.resolved_home / "storage"),
    )
    _run(sessions, ids[2], [hint_epoch, {"val_accuracy": 0.95, "val_nll": 0.1}])  # running
    _run(
        sessions,
        ids[3],
        [hint_epoch, {"val_accuracy": 0.99, "val_nll": 0.05}],
        end=JobStatus.failed,
    )

    got = client.get(url, headers=alice.headers).json()
    assert got["status"] == "running"
    assert [p["job_id"] for p in got["leaderboard"]] == [str(ids[i]) for i in order]
    assert got["best_job_id"] == str(ids[order[0]])
    runner_up = got["leaderboard"][1]
    assert {k: runner_up[k] for k in second} == second
    assert got["points"][2]["val_accuracy"] == 0.95  # running points show their best so far
    assert got["points"][3]["status"] == "failed"
    assert got["points"][3]["error"]["code"] == "diverged"
    assert got["counts"] == {"queued": 0, "running": 1, "succeeded": 2, "failed": 1, "canceled": 0}

    best = got["best_job_id"]
    listed = client.get(f"{url}/artifacts", headers=alice.headers).json()
    assert listed["job_id"] == best
    assert [a["name"] for a in listed["items"]] == ["student.safetensors"]
    assert listed["items"][0]["url"] == f"/v1/jobs/{best}/artifacts/student.safetensors"
    r = client.get(
        f"{url}/artifacts/student.safetensors", headers=alice.headers, follow_redirects=False
    )
    assert r.status_code == 307
    assert r.headers["location"] == f"/v1/jobs/{best}/artifacts/student.safetensors"
    whole = client.get(f"{url}/artifacts/student.safetensors", headers=alice.headers)
    assert whole.content == f"weights of {best}".encode()
    for name in ("report.json", "..%2Fstudent.safetensors"):
        missing = client.get(
            f"{url}/artifacts/{name}", headers=alice.headers, follow_redirects=False
        )
        assert missing.status_code == 404, name


def test_a_job_in_no_sweep_shows_no_sweep_and_no_choices(
    client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        job_id = create_job(s, alice.id, choices=None).id  # a row from before migration 0004
    job = client.get(f"/v1/jobs/{job_id}", headers=alice.headers).json()
    assert (job["sweep_id"], job["choices"]) == (None, {})


# -- helpers: what a worker writes, through its own repository ---------------------------------


def _run(
    sessions: sessionmaker[Session],
    job_id: uuid.UUID,
    epochs: list[dict[str, float]],
    *,
    end: JobStatus | None = None,
    store: LocalStore | None = None,
) -> None:
    """Claim the job, record one metric point per key of each epoch (steps 1, 2, ...), and
    end it as ``end`` (succeeded: with one artifact in ``store``), as the worker does."""
    with sessions() as s, s.begin():
        runs = RunRepository(s)
        now = utcnow()
        assert (
            runs.claim(job_id, lease="l", now=now, stale_before=now, max_attempts=3)
            == Claim.claimed
        )
        for step, points in enumerate(epochs, start=1):
            assert runs.record_epoch(job_id, lease="l", now=utcnow(), step=step, points=points).held
    if end is not None:
        _finish(sessions, job_id, end, store)


def _finish(
    sessions: sessionmaker[Session],
    job_id: uuid.UUID,
    end: JobStatus,
    store: LocalStore | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    with sessions() as s, s.begin():
        runs = RunRepository(s)
        if end == JobStatus.succeeded:
            artifacts = []
            if store is not None:
                w = store.writer(f"jobs/{job_id}/artifacts/student.safetensors")
                w.write(f"weights of {job_id}".encode())
                obj = w.commit()
                artifacts.append(NewArtifact("student.safetensors", obj.uri, obj.size, obj.sha256))
            assert runs.succeed(
                job_id, lease="l", now=utcnow(), artifacts=artifacts, metrics=metrics or {}
            )
        else:
            code = "diverged" if end == JobStatus.failed else "canceled"
            assert runs.finish(job_id, lease="l", status=end, now=utcnow(), error_code=code)
