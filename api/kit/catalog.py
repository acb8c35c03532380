"""The lifecycle teachers and datasets share: an upload becomes a row on a deduplicated blob
(``validating``), a worker task moves it to ``ready`` or ``invalid``, the tenant lists, reads
and (softly) deletes it. A :class:`Catalog` per kind names what differs: its repository,
its public schema and its validation task. Receiving the bytes is :mod:`api.kit.uploads`.
"""

# No `from __future__ import annotations` here: the routes `Catalog.add_routes` builds name
# their path parameter per kind (`teacher_id`), and FastAPI reads that from annotations that
# must be evaluated where the route is built, not looked up in this module's globals.

from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.kit.deps import SessionDep, TenantDep, defer_task, parse_id
from api.kit.errors import NotFound, problems
from api.kit.pagination import decode_cursor, split_page
from api.kit.schemas import DEFAULT_PAGE, MAX_PAGE
from api.kit.uploads import check_validations
from store.models import Blob, Tenant
from store.queue import fair_priority
from store.repositories.catalog import Upload, UploadRepository
from store.repositories.limits import lock_tenant
from store.settings import Settings

Public = TypeVar("Public", bound=BaseModel)

# Not columns of the row: they describe its file.
_FILE_FIELDS = ("size", "sha256")


@dataclass(frozen=True)
class Catalog(Generic[Upload, Public]):
    """One kind of upload as the API sees it.

    Attributes:
        what: The kind in messages and route names ("teacher").
        repository: Its tenant-scoped repository.
        public: Its response schema: the row's columns of the same names, and the file's
            ``size`` and ``sha256``.
        page: Its list schema, ``XList(items, next_cursor)``.
        task: The Celery task that validates an upload of this kind.
    """

    what: str
    repository: type[UploadRepository[Upload]]
    public: type[Public]
    page: type[BaseModel]
    task: str

    def add(self, session: Session, settings: Settings, row: Upload, blob: Blob) -> Upload:
        """Record a new upload on ``blob`` and queue its validation (sent after the commit,
        behind the tenant's earlier validations: :func:`store.queue.fair_priority`).

        Raises:
            TooManyRequests: the tenant's validations in waiting are at their limit
                (counted under the tenant's row lock).
        """
        lock_tenant(session, row.tenant_id)
        rank = check_validations(session, settings, row.tenant_id)
        row.blob_id = blob.id
        self.repository(session, row.tenant_id).add(row)
        row.blob = blob
        defer_task(session, self.task, [str(row.id)], priority=fair_priority(rank))
        return row

    def get(self, session: Session, tenant: Tenant, row_id: str) -> Upload:
        """The tenant's upload with this path id, else a 404."""
        row = self.repository(session, tenant.id).get(parse_id(row_id, self.what))
        if row is None:
            raise NotFound(f"no {self.what} {row_id}")
        return row

    def to_public(self, row: Upload) -> Public:
        # The file is null once validation found the upload invalid and let go of it.
        values: dict[str, Any] = {
            name: getattr(row, name)
            for name in self.public.model_fields
            if name not in _FILE_FIELDS
        }
        values["size"] = row.blob.size if row.blob else None
        values["sha256"] = row.blob.sha256 if row.blob else None
        return self.public.model_validate(values)

    def add_routes(self, router: APIRouter, *, get_doc: str) -> None:
        """``GET ""``, ``GET /{<what>_id}`` and ``DELETE /{<what>_id}`` on ``router``;
        ``get_doc`` describes one upload (the OpenAPI text of the ``GET``)."""
        plural = f"{self.what}s"
        id_name = f"{self.what}_id"
        RowId = Annotated[str, Path(alias=id_name)]

        def list_page(
            session: SessionDep,
            tenant: TenantDep,
            cursor: str | None = None,
            limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
        ) -> BaseModel:
            rows = self.repository(session, tenant.id).list_page(
                after=decode_cursor(cursor) if cursor else None, limit=limit
            )
            page, nxt = split_page(rows, limit)
            return self.page(items=[self.to_public(r) for r in page], next_cursor=nxt)

        def get_one(row_id: RowId, session: SessionDep, tenant: TenantDep) -> BaseModel:
            return self.to_public(self.get(session, tenant, row_id))

        def delete_one(row_id: RowId, session: SessionDep, tenant: TenantDep) -> None:
            self.repository(session, tenant.id).delete(self.get(session, tenant, row_id))

        router.add_api_route(
            "",
            list_page,
            methods=["GET"],
            name=f"list_{plural}",
            description=f"List the tenant's {plural}, newest first.",
            response_model=self.page,
            responses=problems(401, 422),
        )
        router.add_api_route(
            f"/{{{id_name}}}",
            get_one,
            methods=["GET"],
            name=f"get_{self.what}",
            description=get_doc,
            response_model=self.public,
            responses=problems(401, 404),
        )
        router.add_api_route(
            f"/{{{id_name}}}",
            delete_one,
            methods=["DELETE"],
            name=f"delete_{self.what}",
            description=f"Delete a {self.what} (jobs that used it keep their results).",
            status_code=status.HTTP_204_NO_CONTENT,
            responses=problems(401, 404),
        )
