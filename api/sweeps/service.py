"""Sweep submission and reading: every point is a job request checked exactly as
``POST /v1/jobs`` checks one (:func:`api.jobs.service.check`), and all of them are created in
one transaction, their tasks sent after it commits; a sweep's status, metrics and
leaderboard are read from its points' jobs and their recorded metric points."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.jobs import service as jobs_service
from api.jobs.schemas import JobCreate, JobError
from api.kit.deps import defer_task
from api.kit.errors import Conflict, Invalid, NotFound, TooManyRequests
from api.kit.idempotency import check_same_request, request_hash
from kdcore.contract import DistillConfig, epoch_rank, epochs_before_stage
from store.models import Job, JobStatus, MetricPoint, Sweep, Tenant
from store.queue import RUN_JOB, fair_priority
from store.repositories import events
from store.repositories.jobs import JobRepository
from store.repositories.limits import lock_tenant, pending_jobs
from store.repositories.sweeps import SweepRepository
from store.settings import Settings

from . import grid
from .schemas import SweepCounts, SweepCreate, SweepMetric, SweepPoint, SweepPublic

METRICS = ("val_accuracy", "val_nll")


def submit(
    session: Session,
    settings: Settings,
    *,
    tenant: Tenant,
    body: SweepCreate,
    idempotency_key: str | None,
) -> tuple[Sweep, bool]:
    """Check every point, then create the sweep and one queued job per point; returns
    ``(sweep, created)`` (False: an idempotent retry)."""
    sweeps = SweepRepository(session, tenant.id)
    sent = request_hash(body)
    if idempotency_key:
        existing = sweeps.by_idempotency_key(idempotency_key)
        if existing is not None:
            check_same_request(idempotency_key, existing.request_hash, sent, what="sweep")
            return existing, False
    base = body.base
    limit = settings.max_sweep_points_per_tenant
    n = grid.count(body.grid, base.config, scratch=body.scratch)
    if n > limit:
        raise Invalid(
            f"grid: {n} points is more than the {limit} sweep points a tenant may have queued "
            "or running (KDSERVE_MAX_SWEEP_POINTS_PER_TENANT); give fewer values, or split the "
            "grid into sweeps submitted one after another",
            errors=[{"loc": ["grid"], "msg": f"{n} points, over the limit of {limit}"}],
        )
    if base.val_dataset_id is None and base.config.val_split == 0:
        raise Invalid(
            "base.config.val_split: a sweep ranks its points by their validation metrics; give "
            "base.val_dataset_id or a val_split above 0"
        )
    points = grid.expand(body.grid, base.config, scratch=body.scratch)
    checked = [
        jobs_service.check(
            session, settings=settings, tenant=tenant, body=_job_request(base, p), at=_located(p)
        )
        for p in points
    ]
    # Count and insert under the tenant's row lock (store.repositories.limits).
    lock_tenant(session, tenant.id)
    if idempotency_key and (existing := sweeps.by_idempotency_key(idempotency_key)):
        return existing, False  # the same key committed while this request waited
    active = JobRepository(session, tenant.id).active_count(in_sweeps=True)
    if active + len(points) > limit:
        raise TooManyRequests(
            f"this tenant has {active} sweep points queued or running, and this sweep's "
            f"{len(points)} would pass the limit of {limit}; wait for a sweep to finish, cancel "
            "one (POST /v1/sweeps/{id}/cancel), or submit a smaller grid",
            headers={"Retry-After": "60"},
        )

    rank = pending_jobs(session, tenant.id)  # points queue behind the tenant's own jobs
    sweep_id = uuid.uuid4()
    name = body.name or base.name or ""
    jobs = [
        jobs_service.new_job(tenant, c, name=_job_name(name, i, p), sweep_id=sweep_id)
        for i, (p, c) in enumerate(zip(points, checked, strict=True))
    ]
    sweep = Sweep(
        id=sweep_id,
        tenant_id=tenant.id,
        name=name,
        idempotency_key=idempotency_key,
        request_hash=sent if idempotency_key else None,
        base=base.model_dump(mode="json"),
        grid=body.grid.model_dump(mode="json", exclude_unset=True),
        metric=body.metric,
        scratch=body.scratch,
        points=[
            {"job_id": str(j.id), "overrides": p.overrides}
            for j, p in zip(jobs, points, strict=True)
        ],
    )
    try:
        with session.begin_nested():
            sweeps.add(sweep, jobs)
            events.queued(session, jobs)
    except IntegrityError:  # the same Idempotency-Key raced in: return the first sweep
        existing = sweeps.by_idempotency_key(idempotency_key or "")
        if existing is None:
            raise
        check_same_request(idempotency_key or "", existing.request_hash, sent, what="sweep")
        return existing, False
    for i, job in enumerate(jobs):
        priority = fair_priority(rank + i)
        defer_task(session, RUN_JOB, [str(job.id)], queue=settings.queue, priority=priority)
    return sweep, True


def cancel(session: Session, *, tenant: Tenant, sweep: Sweep) -> None:
    """Cancel every point that is not final: queued ones at once, running ones by request
    (their workers stop within seconds), as a job's cancel does.

    Raises:
        Conflict: every point is final already.
    """
    jobs = JobRepository(session, tenant.id)
    pending = [
        j for j in SweepRepository(session, tenant.id).jobs([sweep.id]) if not j.status.final
    ]
    if not pending:
        raise Conflict(f"sweep {sweep.id} has no point left to cancel: every one is final")
    for job in pending:
        if not jobs.cancel_queued(job.id):
            jobs.request_cancel(job.id)
    session.expire_all()


def best_job_id(session: Session, *, tenant: Tenant, sweep: Sweep) -> uuid.UUID:
    """The job of the sweep's best succeeded point.

    Raises:
        NotFound: no point has succeeded yet.
    """
    public = to_public(session, tenant=tenant, sweeps=[sweep])[0]
    if public.best_job_id is None:
        raise NotFound(
            f"sweep {sweep.id} has no succeeded point yet (status {public.status}); its best "
            "student can be downloaded once one succeeds"
        )
    return public.best_job_id


def to_public(session: Session, *, tenant: Tenant, sweeps: Sequence[Sweep]) -> list[SweepPublic]:
    """The sweeps with their points' status and best-epoch metrics (two queries in all)."""
    repo = SweepRepository(session, tenant.id)
    jobs = {j.id: j for j in repo.jobs([s.id for s in sweeps])}
    series: dict[uuid.UUID, list[MetricPoint]] = defaultdict(list)
    for p in repo.metric_points(list(jobs), METRICS):
        series[p.job_id].append(p)
    return [_public(s, jobs, series) for s in sweeps]


def _public(
    sweep: Sweep, jobs: dict[uuid.UUID, Job], series: dict[uuid.UUID, list[MetricPoint]]
) -> SweepPublic:
    metric: SweepMetric = "val_nll" if sweep.metric == "val_nll" else "val_accuracy"
    points = []
    for index, entry in enumerate(sweep.points):
        job = jobs[uuid.UUID(entry["job_id"])]
        config = DistillConfig.model_validate(job.config)
        exported = (job.metrics or {}).get("exported_epoch")
        acc, nll, epoch = _best_epoch(
            series[job.id],
            epochs_before_stage(config)[-1],
            int(exported) if isinstance(exported, int | float) else None,
        )
        error = (
            JobError(code=job.error_code, message=job.error_message or "")
            if job.error_code
            else None
        )
        points.append(
            SweepPoint(
                index=index,
                job_id=job.id,
                overrides=entry["overrides"],
                status=job.status,
                progress=job.progress,
                val_accuracy=acc,
                val_nll=nll,
                best_epoch=epoch,
                error=error,
            )
        )
    leaderboard = sorted((p for p in points if p.status == JobStatus.succeeded), key=_rank(metric))
    counts = Counter(p.status for p in points)
    return SweepPublic(
        id=sweep.id,
        name=sweep.name,
        status=_status(counts),
        metric=metric,
        base=sweep.base,
        grid=sweep.grid,
        scratch=sweep.scratch,
        counts=SweepCounts(**{s.value: counts[s] for s in JobStatus}),
        best_job_id=leaderboard[0].job_id if leaderboard else None,
        points=points,
        leaderboard=leaderboard,
        created_at=sweep.created_at,
        updated_at=max([sweep.updated_at, *(jobs[p.job_id].updated_at for p in points)]),
    )


def _best_epoch(
    recorded: Sequence[MetricPoint], before_final: int, exported: int | None
) -> tuple[float | None, float | None, int | None]:
    """``(val_accuracy, val_nll, epoch)`` of the final stage's epoch the job exported (its
    ``exported_epoch`` metric, once it succeeded: the engine's choice, see
    ``kdcore.train.checkpoint.RunState.keep_export``), or while it runs of its best epoch
    so far (the highest validation accuracy, then the lower NLL, then the earlier epoch).
    So a finished point's figures are those of the student it exports."""
    epochs: dict[int, dict[str, float]] = defaultdict(dict)
    for p in recorded:
        if p.step > before_final:
            epochs[p.step - before_final][p.key] = p.value
    if exported is not None and "val_accuracy" in epochs.get(exported, {}):
        values = epochs[exported]
        return values["val_accuracy"], values.get("val_nll"), exported
    scored = [epoch for epoch, v in epochs.items() if "val_accuracy" in v]
    if not scored:
        return None, None, None
    epoch = max(scored, key=lambda e: (*epoch_rank(epochs[e]), -e))  # ties: the earlier
    return epochs[epoch]["val_accuracy"], epochs[epoch].get("val_nll"), epoch


def _rank(metric: SweepMetric) -> Callable[[SweepPoint], tuple[bool, float]]:
    """Best first; points without the metric last, in grid order (the sort is stable)."""

    def key(p: SweepPoint) -> tuple[bool, float]:
        value = getattr(p, metric)
        if value is None:
            return (True, 0.0)
        return (False, -value if metric == "val_accuracy" else value)

    return key


def _status(counts: Counter[JobStatus]) -> JobStatus:
    """queued until a point starts; running until every point is final; then succeeded if
    one succeeded, else canceled if one was canceled, else failed."""
    final = sum(counts[s] for s in JobStatus if s.final)
    if final < sum(counts.values()):
        return JobStatus.running if counts[JobStatus.running] or final else JobStatus.queued
    if counts[JobStatus.succeeded]:
        return JobStatus.succeeded
    return JobStatus.canceled if counts[JobStatus.canceled] else JobStatus.failed


def _job_request(base: JobCreate, point: grid.Point) -> JobCreate:
    """The job request of a point: the base with the point's config (no teacher for a
    scratch point)."""
    update: dict[str, object] = {"config": point.config}
    if point.scratch:
        update["teacher_id"] = None
    return base.model_copy(update=update)


def _located(point: grid.Point) -> Callable[[jobs_service.Loc], jobs_service.Loc]:
    """A point's job-request fields by their path in the sweep's body: the hint as the grid
    gave it, when it did; everything else from the base."""

    def at(loc: jobs_service.Loc) -> jobs_service.Loc:
        if tuple(loc[:2]) == ("config", "hint") and "hint" in point.at:
            return ("grid", "hint", point.at["hint"], *loc[2:])
        return ("base", *loc)

    return at


def _job_name(name: str, index: int, point: grid.Point) -> str:
    """``<sweep name> [3] temperature=4.0 alpha=0.5`` (cut to the column's 200 characters)."""
    label = " ".join(
        f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in point.overrides.items()
    )
    return f"{name or 'sweep'} [{index}] {label}".strip()[:200]
