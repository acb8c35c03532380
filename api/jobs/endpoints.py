from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from sqlalchemy.orm import Session

from api.kit.deps import ServicesDep, SessionDep, TenantDep, in_transaction, parse_id, read_only
from api.kit.errors import Conflict, NotFound, Unavailable, problems
from api.kit.etag import json_or_304
from api.kit.pagination import decode_cursor, split_page
from api.kit.routing import BoundedJsonRoute
from api.kit.schemas import DEFAULT_PAGE, MAX_PAGE
from store.blobs import StorageError
from store.models import Job, JobStatus, Tenant
from store.repositories import events as event_log
from store.repositories.jobs import JobRepository

from . import events, service
from .schemas import (
    ArtifactList,
    ArtifactPublic,
    EventList,
    JobCreate,
    JobList,
    JobMetrics,
    JobPublic,
    MetricPointOut,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=BoundedJsonRoute)

DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE = 100, 1000
MAX_SEQ = 2**31 - 1  # the seq column's range
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the `If-None-Match` ETag is current"}
}
IfNoneMatch = Annotated[
    str | None, Header(max_length=1000, description="an ETag of an earlier answer: 304 if current")
]


def _job(session: SessionDep, tenant: Tenant, job_id: str) -> tuple[JobRepository, Job]:
    repo = JobRepository(session, tenant.id)
    job = repo.get(parse_id(job_id, "job"))
    if job is None:
        raise NotFound(f"no job {job_id}")
    return repo, job


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=problems(401, 409, 413, 422, 429),
)
def submit_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    """Submit a distillation job; poll the URL in `Location`. Retries with the same
    `Idempotency-Key` return the same job."""
    job, _created = service.submit(
        session, services.settings, tenant=tenant, body=body, idempotency_key=idempotency_key
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return service.to_public(job)


@router.get("", response_model=JobList, responses=problems(401, 422))
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> JobList:
    """List the tenant's jobs, newest first, optionally by status."""
    rows = JobRepository(session, tenant.id).list_page(
        status=status, after=decode_cursor(cursor) if cursor else None, limit=limit
    )
    page, nxt = split_page(rows, limit)
    return JobList(items=[service.to_public(j) for j in page], next_cursor=nxt)


@router.get(
    "/{job_id}", response_model=JobPublic, responses={**NOT_MODIFIED, **problems(401, 404, 422)}
)
async def get_job(
    job_id: str, tenant: TenantDep, services: ServicesDep, if_none_match: IfNoneMatch = None
) -> Response:
    """A job's status, stage, epoch, progress, latest metrics and error; with an `ETag`
    (send it back as `If-None-Match`: 304 while the job is unchanged)."""
    # The status path clients poll: one read in autocommit mode and one thread-pool hop
    # (docs/design.md, "The status path"); the body is serialised once, not re-validated.
    jid = parse_id(job_id, "job")
    job = await read_only(services, lambda session: JobRepository(session, tenant.id).get(jid))
    if job is None:
        raise NotFound(f"no job {job_id}")
    return json_or_304(service.to_public(job), if_none_match)


@router.get(
    "/{job_id}/events",
    response_model=EventList,
    responses={
        200: {
            "description": "A page of events (JSON), or with `Accept: text/event-stream` "
            "server-sent events: `id` the event's number, `event` its kind, `data` the event "
            "as JSON; the stream ends after the job's final state (and report)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **NOT_MODIFIED,
        **problems(401, 404, 422, 429),
    },
)
async def job_events(
    job_id: str,
    request: Request,
    tenant: TenantDep,
    services: ServicesDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_PAGE)] = DEFAULT_EVENTS_PAGE,
    last_event_id: Annotated[
        str | None, Header(max_length=20, description="resume a stream after this event")
    ] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The job's events in order (state changes, each epoch's metrics, the report): pages
    after `after`, or a live stream of server-sent events with `Accept: text/event-stream`
    (resumed after `Last-Event-ID`)."""
    jid = parse_id(job_id, "job")
    stream = events.wants_stream(request.headers.get("accept"))
    start = min(events.resume_point(last_event_id, after) if stream else after or 0, MAX_SEQ)

    def read(session: Session) -> event_log.Batch:
        # A short transaction: a stream must not hold a session while it waits.
        if JobRepository(session, tenant.id).get(jid) is None:
            raise NotFound(f"no job {job_id}")
        return event_log.after(session, jid, after=start, limit=0 if stream else limit + 1)

    batch = await in_transaction(services, read)
    if stream:
        return events.EventStream(
            events.stream(services, jid, start), services=services, tenant=tenant.id
        )
    return json_or_304(events.page(batch, limit), if_none_match)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobPublic,
    responses=problems(401, 404, 409),
)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    """Cancel: a queued job at once; a running one stops within seconds, keeping its last
    checkpoint."""
    repo, job = _job(session, tenant, job_id)
    if not (repo.cancel_queued(job.id) or repo.request_cancel(job.id)):
        session.refresh(job)
        if job.status.final:
            raise Conflict(f"job {job.id} already {job.status}")
    session.refresh(job)
    return service.to_public(job)


@router.get("/{job_id}/metrics", response_model=JobMetrics, responses=problems(401, 404))
def job_metrics(job_id: str, session: SessionDep, tenant: TenantDep) -> JobMetrics:
    """Every recorded metric as a series of (step, value, time)."""
    repo, job = _job(session, tenant, job_id)
    series: dict[str, list[MetricPointOut]] = {}
    for p in repo.metric_points(job.id):
        series.setdefault(p.key, []).append(
            MetricPointOut(step=p.step, value=p.value, time=p.created_at)
        )
    return JobMetrics(series=series)


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=problems(401, 404))
def list_artifacts(job_id: str, session: SessionDep, tenant: TenantDep) -> ArtifactList:
    """The files a finished job produced (exported student, report, metrics, checkpoint)."""
    repo, job = _job(session, tenant, job_id)
    return ArtifactList(
        items=[
            ArtifactPublic(
                name=a.name,
                size=a.size,
                sha256=a.sha256,
                url=f"/v1/jobs/{job.id}/artifacts/{a.name}",
            )
            for a in repo.artifacts(job.id)
        ]
    )


@router.get(
    "/{job_id}/artifacts/{name}",
    response_model=None,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "a byte range (HTTP Range)"},
        307: {"description": "redirect to a presigned storage URL"},
        **problems(401, 404, 503),
    },
)
def download_artifact(
    job_id: str, name: str, session: SessionDep, tenant: TenantDep, services: ServicesDep
) -> Response:
    """Download one artifact: streamed with HTTP Range support from local storage, or a
    redirect to a presigned URL on S3."""
    repo, job = _job(session, tenant, job_id)
    # Looked up by exact name among the job's rows: a name can never reach another path.
    # Names are plain file names: no separators, and no NUL (which Postgres text refuses).
    artifact = None if {"/", "\\", "\x00"} & set(name) else repo.artifact(job.id, name)
    if artifact is None:
        raise NotFound(f"job {job.id} has no artifact {name!r}")
    path = services.store.local_path(artifact.uri)
    if path is not None:
        if not path.is_file():
            raise Unavailable(
                f"artifact {name!r} is missing from storage", headers={"Retry-After": "30"}
            )
        return FileResponse(path, filename=artifact.name, media_type=_media_type(artifact.name))
    try:
        url = services.store.presign(
            artifact.uri, expires_s=services.settings.s3_presign_expiry_s, filename=artifact.name
        )
    except StorageError as exc:
        raise Unavailable(str(exc), headers={"Retry-After": "10"}) from exc
    if url is None:  # pragma: no cover - every remote store presigns
        raise Unavailable("storage cannot serve this artifact")
    return RedirectResponse(url, status_code=307)


@router.get("/{job_id}/report", response_model=dict[str, Any], responses=problems(401, 404, 503))
def job_report(
    job_id: str, session: SessionDep, tenant: TenantDep, services: ServicesDep
) -> JSONResponse:
    """The engine's report.json: teacher and student side by side."""
    repo, job = _job(session, tenant, job_id)
    artifact = repo.artifact(job.id, "report.json")
    if artifact is None:
        raise NotFound(f"job {job.id} has no report yet (status {job.status})")
    try:
        data = b"".join(services.store.iter_bytes(artifact.uri))
    except (StorageError, OSError) as exc:
        raise Unavailable(
            f"could not read the report from storage: {exc}", headers={"Retry-After": "10"}
        ) from exc
    return JSONResponse(json.loads(data))


def _media_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".jsonl"):
        return "application/x-ndjson"
    return "application/octet-stream"
