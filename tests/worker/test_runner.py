"""Jobs run end to end by ``run_job`` (as the ``distill.run`` task does), on tiny CPU models."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
import torch
from sqlalchemy.exc import OperationalError
from torch import nn

from kdcore.train import CHECKPOINT_NAME
from store.blobs import LocalStore, StorageError, StoredObject
from store.db import transaction
from store.models import JobStatus, utcnow
from store.repositories.runs import LeaseState, RunRepository
from tests.kdcore.factories import config
from tests.worker.factories import (
    Env,
    World,
    create_teacher,
    create_world,
    state_dict_bytes,
    teacher_model,
)
from worker import runner
from worker.files import SandboxOutput
from worker.reaper import reap_jobs
from worker.retry import NO_WAIT
from worker.runner import Outcome, job_key

FITNET = config(
    method="fitnet",
    epochs=2,
    hint={"teacher_layer": "relu1", "student_layer": "relu2", "epochs": 1},
)


@pytest.fixture
def world(env: Env) -> World:
    return create_world(env)


@pytest.fixture
def pg_world(pg_env: Env) -> World:
    return create_world(pg_env)


def after_epoch_sync(monkeypatch: pytest.MonkeyPatch, action: Callable[[int], None]) -> None:
    """Call ``action(epoch_count)`` right after each epoch's checkpoint reaches storage."""
    original = runner._Attempt.sync_work
    count = 0

    def sync_then_act(self: runner._Attempt, out: SandboxOutput) -> None:
        nonlocal count
        original(self, out)
        count += 1
        action(count)

    monkeypatch.setattr(runner._Attempt, "sync_work", sync_then_act)


def work_uri(env: Env, job_id: uuid.UUID, tenant_id: uuid.UUID, name: str) -> str:
    return env.store.uri(job_key(tenant_id, job_id, "work", name))


def test_a_scratch_job_succeeds_with_artifacts_and_metrics(env: Env, world: World) -> None:
    job_id = world.job(env)
    assert env.run(job_id) is Outcome.succeeded

    job = env.job(job_id)
    assert (job.status, job.progress, job.attempts) == (JobStatus.succeeded, 1.0, 1)
    assert (job.stage, job.epoch, job.error_code, job.lease) == ("scratch", 2, None, None)
    assert job.finished_at is not None
    assert 0 <= job.metrics["student_accuracy"] <= 1
    assert {"val_accuracy", "train_loss", "lr", "samples_per_s"} <= job.metrics.keys()

    artifacts = env.artifacts(job_id)
    assert set(artifacts) == {
        "student.safetensors",
        "student.json",
        "report.json",
        "metrics.jsonl",
        CHECKPOINT_NAME,
    }
    for name, a in artifacts.items():
        data = env.read(a.uri)  # listed means downloadable, and it is what the row says
        assert (len(data), hashlib.sha256(data).hexdigest()) == (a.size, a.sha256)
        assert a.uri == env.store.uri(job_key(world.tenant_id, job_id, "artifacts", name))
    report = json.loads(env.read(artifacts["report.json"].uri))
    assert report["student"]["accuracy"] == job.metrics["student_accuracy"]
    # Each stage's training time, for GET /metrics's kdserve_stage_duration_seconds.
    assert job.metrics["stage_seconds_scratch"] == report["stage_seconds"]["scratch"] > 0

    points = env.points(job_id)
    assert {p.step for p in points} == {1, 2}
    assert {p.key for p in points if p.step == 2} == {
        "train_loss",
        "train_ce",
        "lr",
        "val_accuracy",
        "val_nll",
        "samples_per_s",
    }
    # The scratch files are gone: locally, and the resume copy in storage.
    assert list((env.settings.resolved_home / "work").iterdir()) == []
    assert not env.store.exists(work_uri(env, job_id, world.tenant_id, CHECKPOINT_NAME))


def test_a_fitnet_job_runs_both_stages(
    pg_env: Env, pg_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "STEP_WRITE_INTERVAL_S", 0.0)  # write every step report
    job_id = pg_world.job(pg_env, teacher_id=pg_world.teacher_id, config=FITNET)
    assert pg_env.run(job_id, formats=("safetensors", "torchscript")) is Outcome.succeeded

    job = pg_env.job(job_id)
    assert (job.status, job.stage, job.epoch) == (JobStatus.succeeded, "kd", 2)
    assert "teacher_accuracy" in job.metrics
    assert "compression" in job.metrics
    assert job.metrics["stage_seconds_hint"] > 0
    assert job.metrics["stage_seconds_kd"] > 0
    assert "student.torchscript.pt" in pg_env.artifacts(job_id)
    by_step: dict[int, set[str]] = {}
    for p in pg_env.points(job_id):
        by_step.setdefault(p.step, set()).add(p.key)
    # Steps count epochs across stages: the hint epoch, then two KD epochs.
    assert sorted(by_step) == [1, 2, 3]
    assert "train_hint" in by_step[1]
    assert "val_accuracy" not in by_step[1]  # the hint stage is not scored
    assert {"train_kd", "val_accuracy"} <= by_step[3]


def test_a_bad_hint_layer_fails_as_invalid_input_naming_valid_layers(
    env: Env, world: World
) -> None:
    cfg = FITNET | {"hint": {"teacher_layer": "relu9", "student_layer": "relu2"}}
    job_id = world.job(env, teacher_id=world.teacher_id, config=cfg)
    assert env.run(job_id) is Outcome.failed
    job = env.job(job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "invalid_input")
    assert job.error_message is not None
    assert "no layer 'relu9'; nearest valid paths: relu2, relu1" in job.error_message
    assert env.artifacts(job_id) == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_cuda_job_on_a_worker_without_a_gpu_fails_as_no_gpu_saying_what_to_do(
    env: Env, world: World
) -> None:
    job_id = world.job(env, config=config(device="cuda"))
    assert env.run(job_id) is Outcome.failed
    job = env.job(job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "no_gpu")
    assert job.error_message is not None
    assert job.error_message.startswith(
        "this job asks for a CUDA GPU, but the worker that ran it has none"
    )
    assert '"device": "auto"' in job.error_message
    assert env.artifacts(job_id) == {}


def test_a_succeeded_jobs_warnings_are_recorded_bounded(
    env: Env, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What kdcore reports when an export format fails (tests/kdcore/test_pipeline.py makes
    # one fail), added to the real child's report: the runner keeps it, bounded.
    real = runner.run_in_sandbox

    def reporting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        report = real(*args, **kwargs)
        report["warnings"] = ["the onnx export was left out, it failed: " + "x" * 5000] * 20
        return report

    monkeypatch.setattr(runner, "run_in_sandbox", reporting)
    job_id = world.job(env)
    assert env.run(job_id) is Outcome.succeeded
    warnings = env.job(job_id).warnings
    assert warnings is not None
    assert len(warnings) == 8
    assert all(w.startswith("the onnx export was left out") and len(w) == 1000 for w in warnings)


def test_a_diverging_job_fails_as_diverged(env: Env, world: World) -> None:
    job_id = world.job(
        env, student={"family": "mlp", "hidden": [256, 256, 256]}, config=config(lr=10.0, epochs=3)
    )
    assert env.run(job_id) is Outcome.failed
    job = env.job(job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "diverged")
    assert job.error_message is not None
    assert job.error_message.startswith("training diverged in stage 'scratch', epoch ")


def test_a_job_diverging_after_good_epochs_keeps_their_checkpoint(env: Env, world: World) -> None:
    # A teacher whose logits overflow: the hint stage (on a middle layer) trains well, the
    # KD stage's loss is NaN at its first step.
    teacher = teacher_model()
    head = [m for m in teacher.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.fill_(1e38)
    overflowing = env.add(
        lambda s: (
            create_teacher(s, env.store, world.tenant_id, content=state_dict_bytes(teacher)).id
        )
    )
    job_id = world.job(env, teacher_id=overflowing, config=FITNET)
    assert env.run(job_id) is Outcome.failed
    job = env.job(job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "diverged")
    assert job.error_message is not None
    assert re.match(r"training diverged in stage 'kd', epoch 1, step \d+ ", job.error_message)
    # The hint epoch's checkpoint stays in storage: a resubmission with a lower lr can
    # start from it, and nothing of the blown-up stage is published.
    assert env.store.exists(work_uri(env, job_id, world.tenant_id, CHECKPOINT_NAME))
    assert env.artifacts(job_id) == {}
    assert job.epoch == 1


def test_a_cancel_requested_before_the_start_cancels_without_training(
    env: Env, world: World
) -> None:
    job_id = world.job(env, cancel_requested=True)
    assert env.run(job_id) is Outcome.canceled
    job = env.job(job_id)
    assert (job.status, job.error_code, job.epoch) == (JobStatus.canceled, "canceled", None)
    assert job.finished_at is not None


def test_a_cancel_during_training_stops_at_the_next_step_and_keeps_the_checkpoint(
    pg_env: Env, pg_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = pg_world.job(pg_env, config=config(epochs=3))
    after_epoch_sync(
        monkeypatch, lambda n: pg_env.update_job(job_id, cancel_requested=True) if n == 1 else None
    )
    assert pg_env.run(job_id) is Outcome.canceled

    job = pg_env.job(job_id)
    assert (job.status, job.error_code) == (JobStatus.canceled, "canceled")
    # The request reached the sandbox during epoch 2 (from the heartbeat or a progress
    # write) or, at the latest, with epoch 2's own write: epoch 3 never ran to its end.
    assert job.epoch in (1, 2)
    assert job.error_message is not None
    assert re.fullmatch(
        r"canceled in stage 'scratch', epoch [23] at the user's request", job.error_message
    )
    assert pg_env.artifacts(job_id) == {}
    assert pg_env.store.exists(work_uri(pg_env, job_id, pg_world.tenant_id, CHECKPOINT_NAME))


def test_a_duplicate_delivery_of_a_running_job_does_nothing(env: Env, world: World) -> None:
    job_id = world.job(
        env, status=JobStatus.running, attempts=1, lease="alive", heartbeat_at=utcnow()
    )
    assert env.run(job_id) is Outcome.skipped
    job = env.job(job_id)
    assert (job.status, job.lease, job.attempts) == (JobStatus.running, "alive", 1)


def test_a_finished_job_delivered_again_does_nothing(env: Env, world: World) -> None:
    job_id = world.job(env)
    assert env.run(job_id) is Outcome.succeeded
    before = {a.id for a in env.artifacts(job_id).values()}
    assert env.run(job_id) is Outcome.skipped
    assert {a.id for a in env.artifacts(job_id).values()} == before
    assert env.job(job_id).attempts == 1


def test_a_killed_worker_leaves_the_job_running_and_the_next_attempt_resumes_exactly(
    pg_env: Env, pg_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(epochs=3)
    reference = pg_world.job(pg_env, config=cfg)
    assert pg_env.run(reference) is Outcome.succeeded

    job_id = pg_world.job(pg_env, config=cfg)

    def die(epochs: int) -> None:
        if epochs == 1:
            raise SystemExit(1)  # what a worker shutting down raises in the task

    after_epoch_sync(monkeypatch, die)
    with pytest.raises(SystemExit):
        pg_env.run(job_id)
    monkeypatch.undo()
    job = pg_env.job(job_id)
    assert (job.status, job.attempts, job.epoch) == (JobStatus.running, 1, 1)
    assert pg_env.store.exists(work_uri(pg_env, job_id, pg_world.tenant_id, CHECKPOINT_NAME))

    # Once the heartbeat is stale the reaper requeues it, and the next delivery resumes.
    sent: list[str] = []
    reaped = reap_jobs(
        settings=pg_env.settings,
        sessions=pg_env.sessions,
        send=sent.append,
        now=utcnow() + timedelta(minutes=5),
    )
    assert (reaped.requeued, sent) == ([job_id], [str(job_id)])
    assert pg_env.run(job_id) is Outcome.succeeded

    job = pg_env.job(job_id)
    assert (job.status, job.attempts) == (JobStatus.succeeded, 2)
    # Bit for bit the weights of the uninterrupted run.
    resumed, uninterrupted = pg_env.artifacts(job_id), pg_env.artifacts(reference)
    assert resumed["student.safetensors"].sha256 == uninterrupted["student.safetensors"].sha256
    assert [(p.step, p.key) for p in pg_env.points(job_id)] == [
        (p.step, p.key) for p in pg_env.points(reference)
    ]
    rows = pg_env.read(resumed["metrics.jsonl"].uri).decode().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]


def test_an_attempt_that_loses_its_lease_stops_without_writing(
    pg_env: Env, pg_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = pg_world.job(pg_env, config=config(epochs=3))
    # As if the reaper requeued the job and another worker claimed it.
    after_epoch_sync(
        monkeypatch,
        lambda n: pg_env.update_job(job_id, lease="other", attempts=2) if n == 1 else None,
    )
    assert pg_env.run(job_id) is Outcome.lost
    job = pg_env.job(job_id)
    assert (job.status, job.lease, job.attempts, job.epoch) == (JobStatus.running, "other", 2, 1)
    assert [p.step for p in pg_env.points(job_id)] == [1] * 6  # epoch 2 was not recorded
    assert pg_env.artifacts(job_id) == {}


def test_a_postgres_restart_during_a_job_does_not_fail_it(
    pg_env: Env, pg_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = pg_world.job(pg_env, config=config(epochs=3))

    assert pg_env.settings.database_url is not None
    dsn = pg_env.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    killed: list[int] = []

    def kill_connections(_: int) -> None:
        # What a restart does to the worker's pooled connections: closes every one of them.
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        killed.append(len(rows))

    after_epoch_sync(monkeypatch, kill_connections)
    assert pg_env.run(job_id) is Outcome.succeeded
    assert {p.step for p in pg_env.points(job_id)} == {1, 2, 3}
    assert min(killed) >= 1


class FailingStore(LocalStore):
    """Local storage that refuses uploads under some keys (a storage outage)."""

    def __init__(self, root: Path, refuse: str) -> None:
        super().__init__(root)
        self.refuse = refuse

    def upload_fileobj(self, key: str, f: IO[bytes]) -> StoredObject:
        if self.refuse in key:
            raise StorageError(f"storage is down (uploading {key})")
        return super().upload_fileobj(key, f)


def failing_env(env: Env, refuse: str) -> Env:
    assert isinstance(env.store, LocalStore)
    return Env(env.settings, env.sessions, FailingStore(env.store.root, refuse))


def test_a_storage_outage_while_publishing_fails_the_job_and_lists_nothing(
    env: Env, world: World
) -> None:
    job_id = world.job(env)
    failing = failing_env(env, "/artifacts/")
    assert failing.run(job_id) is Outcome.failed
    job = env.job(job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "storage")
    assert job.error_message is not None
    assert "could not be stored" in job.error_message
    assert env.artifacts(job_id) == {}


def test_a_storage_outage_while_saving_checkpoints_does_not_stop_training(
    env: Env, world: World
) -> None:
    job_id = world.job(env)
    failing = failing_env(env, "/work/")
    assert failing.run(job_id) is Outcome.succeeded
    assert "student.safetensors" in env.artifacts(job_id)


def flaky_record_epoch(monkeypatch: pytest.MonkeyPatch, fails: Callable[[int, int], bool]) -> None:
    """Make ``record_epoch`` raise a connection error when ``fails(step, call)``."""
    original = RunRepository.record_epoch
    calls: dict[int, int] = {}

    def record_epoch(self: RunRepository, job_id: uuid.UUID, **kw: Any) -> LeaseState:
        step = kw["step"]
        calls[step] = calls.get(step, 0) + 1
        if fails(step, calls[step]):
            raise OperationalError("UPDATE jobs ...", {}, Exception("server closed the connection"))
        return original(self, job_id, **kw)

    monkeypatch.setattr(RunRepository, "record_epoch", record_epoch)


def test_a_database_error_in_a_progress_write_is_retried(
    env: Env, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky_record_epoch(monkeypatch, lambda step, call: step == 1 and call == 1)
    job_id = world.job(env)
    assert env.run(job_id) is Outcome.succeeded
    assert {p.step for p in env.points(job_id)} == {1, 2}


def test_a_database_down_for_a_whole_progress_write_does_not_fail_the_job(
    env: Env, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky_record_epoch(monkeypatch, lambda step, call: step == 1)
    job_id = world.job(env)
    assert env.run(job_id) is Outcome.succeeded
    assert {p.step for p in env.points(job_id)} == {2}  # epoch 1's points were given up


def test_the_heartbeat_renews_the_lease_and_notices_cancel_and_loss(env: Env, world: World) -> None:
    job_id = world.job(env)
    now = utcnow()
    with transaction(env.sessions) as s:
        RunRepository(s).claim(job_id, lease="mine", now=now, stale_before=now, max_attempts=3)
    first = env.job(job_id).heartbeat_at
    assert first is not None
    lease = runner._Lease(job_id, "mine", env.sessions, NO_WAIT)

    def wait_for(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, "the heartbeat did not get there in 10 s"
            time.sleep(0.02)

    with runner._Heartbeat(lease, 0.05):
        wait_for(lambda: (env.job(job_id).heartbeat_at or first) > first)
        assert not lease.should_cancel()
        env.update_job(job_id, cancel_requested=True)
        wait_for(lease.cancel.is_set)
        assert lease.should_cancel()
        assert not lease.lost.is_set()
        env.update_job(job_id, lease="theirs")
        wait_for(lease.lost.is_set)
    assert env.job(job_id).lease == "theirs"
