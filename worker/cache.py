"""The worker's side of the teacher cache: entries of a tenant in object storage
(``tenants/<t>/cache/<key>.safetensors``), listed in ``cache_entries``, moved whole between
storage and a job's sandbox (:mod:`worker.sandbox.protocol`, :class:`CacheMessage`).

The worker never reads an entry's content: the child verifies each entry it is given
(:func:`kdcore.cache.load_or_build`) and reports a corrupt one, which is deleted here and
rebuilt by the child. Entries are per tenant twice over: the tenant is part of every key
(the request's ``cache.tenant``), and the objects and rows the worker looks in are the job's
tenant's only. After an entry is recorded, least recently used entries are evicted until the
tenant's and everyone's entries fit the caps (``KDSERVE_TEACHER_CACHE_MAX_BYTES*``).
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from store.blobs import BlobStore
from store.db import transaction
from store.models import utcnow
from store.repositories.cache import CacheRepository
from store.settings import Settings
from worker.files import SandboxOutput, download
from worker.retry import STORAGE_ERRORS, Retries
from worker.sandbox.protocol import cache_file

log = logging.getLogger(__name__)


def cache_object_key(tenant_id: uuid.UUID, key: str) -> str:
    """Where an entry lives in storage: the key is its name, so publishing twice is harmless."""
    return f"tenants/{tenant_id}/cache/{cache_file(key)}"


@dataclass
class JobCache:
    """One job's cache handler (:class:`worker.sandbox.launcher.CacheHandler`).

    Attributes:
        folder: the sandbox's cache folder, opened before the child started.
        scratch: a folder of the worker's, outside the sandbox, for downloads.
    """

    settings: Settings
    sessions: sessionmaker[Session]
    store: BlobStore
    tenant_id: uuid.UUID
    folder: SandboxOutput
    scratch: Path
    retries: Retries

    def _repo(self, session: Session) -> CacheRepository:
        return CacheRepository(session, self.tenant_id)

    def get(self, key: str) -> bool:
        with self.sessions() as session:
            entry = self._repo(session).by_key(key)
            found = (entry.id, entry.uri) if entry is not None else None
        if found is None:
            return False
        entry_id, uri = found
        self.scratch.mkdir(exist_ok=True)
        local = self.scratch / cache_file(key)
        try:
            download(self.store, uri, local, delays=self.retries.storage)
            self.folder.place(cache_file(key), local)
        except STORAGE_ERRORS as exc:  # gone (evicted or deleted meanwhile), or unreachable
            log.warning("teacher cache: entry %s not fetched (%s); the job builds it", key, exc)
            return False
        finally:
            local.unlink(missing_ok=True)
        with transaction(self.sessions) as session:
            self._repo(session).hit(entry_id, now=utcnow())
        return True

    def put(self, key: str) -> None:
        name = cache_file(key)
        cap = min(
            self.settings.teacher_cache_max_bytes_per_tenant,
            self.settings.teacher_cache_max_bytes,
        )
        with self.folder.open(name) as f:
            size = os.fstat(f.fileno()).st_size
            if size > cap:
                log.warning(
                    "teacher cache: entry %s (%d bytes) is larger than the cache cap (%d); "
                    "not kept",
                    key,
                    size,
                    cap,
                )
                return
            stored = self.store.upload_fileobj(cache_object_key(self.tenant_id, key), f)
        with transaction(self.sessions) as session:
            repo = self._repo(session)
            repo.record(
                key=key, uri=stored.uri, size=stored.size, sha256=stored.sha256, now=utcnow()
            )
            evicted = repo.evict(
                keep=key,
                max_tenant_bytes=self.settings.teacher_cache_max_bytes_per_tenant,
                max_total_bytes=self.settings.teacher_cache_max_bytes,
            )
        self._delete_objects(evicted)
        if evicted:
            log.info("teacher cache: evicted %d entries to stay under the caps", len(evicted))

    def discard(self, key: str) -> None:
        with transaction(self.sessions) as session:
            self._repo(session).delete_key(key)
        self._delete_objects([self.store.uri(cache_object_key(self.tenant_id, key))])
        log.warning("teacher cache: entry %s failed verification; deleted, being rebuilt", key)

    def _delete_objects(self, uris: list[str]) -> None:
        """After the rows are gone: an object left behind (storage failing) is unlisted and
        overwritten when its key is built again."""
        for uri in uris:
            try:
                self.store.delete(uri)
            except STORAGE_ERRORS as exc:
                log.warning("teacher cache: could not delete %s (%s)", uri, exc)
