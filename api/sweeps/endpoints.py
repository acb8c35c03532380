from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import RedirectResponse

from api.jobs.schemas import ArtifactPublic
from api.kit.deps import ServicesDep, SessionDep, TenantDep, parse_id
from api.kit.errors import NotFound, problems
from api.kit.pagination import decode_cursor, split_page
from api.kit.routing import BoundedJsonRoute
from api.kit.schemas import DEFAULT_PAGE, MAX_PAGE
from store.models import Sweep, Tenant
from store.repositories.jobs import JobRepository
from store.repositories.sweeps import SweepRepository

from . import service
from .schemas import SweepArtifactList, SweepCreate, SweepList, SweepPublic

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], route_class=BoundedJsonRoute)


def _sweep(session: SessionDep, tenant: Tenant, sweep_id: str) -> Sweep:
    sweep = SweepRepository(session, tenant.id).get(parse_id(sweep_id, "sweep"))
    if sweep is None:
        raise NotFound(f"no sweep {sweep_id}")
    return sweep


def _public(session: SessionDep, tenant: Tenant, sweep: Sweep) -> SweepPublic:
    return service.to_public(session, tenant=tenant, sweeps=[sweep])[0]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepPublic,
    responses=problems(401, 409, 413, 422, 429),
)
def submit_sweep(
    body: SweepCreate,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> SweepPublic:
    """Submit a sweep: one job per point of the grid, all or none; poll the URL in
    `Location`. Retries with the same `Idempotency-Key` return the same sweep."""
    sweep, _created = service.submit(
        session, services.settings, tenant=tenant, body=body, idempotency_key=idempotency_key
    )
    response.headers["Location"] = f"/v1/sweeps/{sweep.id}"
    return _public(session, tenant, sweep)


@router.get("", response_model=SweepList, responses=problems(401, 422))
def list_sweeps(
    session: SessionDep,
    tenant: TenantDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> SweepList:
    """List the tenant's sweeps, newest first."""
    rows = SweepRepository(session, tenant.id).list_page(
        after=decode_cursor(cursor) if cursor else None, limit=limit
    )
    page, nxt = split_page(rows, limit)
    return SweepList(items=service.to_public(session, tenant=tenant, sweeps=page), next_cursor=nxt)


@router.get("/{sweep_id}", response_model=SweepPublic, responses=problems(401, 404))
def get_sweep(sweep_id: str, session: SessionDep, tenant: TenantDep) -> SweepPublic:
    """A sweep's points (status, progress, best-epoch metrics), leaderboard and best job."""
    return _public(session, tenant, _sweep(session, tenant, sweep_id))


@router.post(
    "/{sweep_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepPublic,
    responses=problems(401, 404, 409),
)
def cancel_sweep(sweep_id: str, session: SessionDep, tenant: TenantDep) -> SweepPublic:
    """Cancel every point not yet final: queued ones at once, running ones within seconds."""
    sweep = _sweep(session, tenant, sweep_id)
    service.cancel(session, tenant=tenant, sweep=sweep)
    return _public(session, tenant, sweep)


@router.get("/{sweep_id}/artifacts", response_model=SweepArtifactList, responses=problems(401, 404))
def list_sweep_artifacts(
    sweep_id: str, session: SessionDep, tenant: TenantDep
) -> SweepArtifactList:
    """The files of the best point's job (404 until a point has succeeded)."""
    sweep = _sweep(session, tenant, sweep_id)
    job_id = service.best_job_id(session, tenant=tenant, sweep=sweep)
    return SweepArtifactList(
        job_id=job_id,
        items=[
            ArtifactPublic(
                name=a.name,
                size=a.size,
                sha256=a.sha256,
                url=f"/v1/jobs/{job_id}/artifacts/{quote(a.name, safe='')}",
            )
            for a in JobRepository(session, tenant.id).artifacts(job_id)
        ],
    )


@router.get(
    "/{sweep_id}/artifacts/{name}",
    status_code=status.HTTP_307_TEMPORARY_REDIRECT,
    response_class=RedirectResponse,
    responses={
        307: {"description": "redirect to the artifact of the best point's job"},
        **problems(401, 404),
    },
)
def download_sweep_artifact(
    sweep_id: str, name: str, session: SessionDep, tenant: TenantDep
) -> RedirectResponse:
    """Download one artifact of the best point's job: a redirect to the job's artifact."""
    sweep = _sweep(session, tenant, sweep_id)
    job_id = service.best_job_id(session, tenant=tenant, sweep=sweep)
    artifact = (
        None
        if {"/", "\\", "\x00"} & set(name)
        else JobRepository(session, tenant.id).artifact(job_id, name)
    )
    if artifact is None:
        raise NotFound(f"the best point's job {job_id} has no artifact {name!r}")
    return RedirectResponse(f"/v1/jobs/{job_id}/artifacts/{quote(name, safe='')}", status_code=307)
