"""The teacher cache in the service: jobs of a tenant share entries through storage and the
``cache_entries`` table, run end to end by ``run_job`` with a real sandbox; eviction and the
worker's side (:class:`worker.cache.JobCache`) on both databases."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from store.db import transaction
from store.models import CacheEntry, JobStatus, utcnow
from store.repositories.cache import CacheRepository
from tests.kdcore.factories import config
from tests.worker.factories import Env, World, create_tenant, create_world
from worker.cache import JobCache, cache_object_key
from worker.files import SandboxOutput
from worker.retry import NO_WAIT
from worker.runner import Outcome

# KD with augmentation: the entry holds K = min(teacher_views, epochs) = 2 views per sample.
KD = config(method="kd", epochs=2, augment="crop_flip", crop_padding=1)


@pytest.fixture
def world(pg_env: Env) -> World:
    return create_world(pg_env)


def _report(env: Env, job_id: uuid.UUID) -> dict[str, Any]:
    artifacts = env.artifacts(job_id)
    report: dict[str, Any] = json.loads(env.read(artifacts["report.json"].uri))
    return report


def _kd_job(env: Env, world: World) -> dict[str, Any]:
    """Run one KD job of ``world`` to success; its report's ``teacher_cache``."""
    job_id = world.job(env, teacher_id=world.teacher_id, config=KD)
    assert env.run(job_id) is Outcome.succeeded
    assert env.job(job_id).status is JobStatus.succeeded
    cache: dict[str, Any] = _report(env, job_id)["teacher_cache"]
    return cache


def _entries(env: Env) -> list[CacheEntry]:
    with env.sessions() as s:
        return list(s.scalars(select(CacheEntry).order_by(CacheEntry.created_at)))


def _entry_path(env: Env, entry: CacheEntry) -> Path:
    path = env.store.local_path(entry.uri)
    assert path is not None
    return path


def test_a_second_kd_job_with_augmentation_hits(pg_env: Env, world: World) -> None:
    first = _kd_job(pg_env, world)
    assert first["status"] == "miss"
    second = _kd_job(pg_env, world)
    assert second["status"] == "hit"
    assert second["key"] == first["key"]
    [entry] = _entries(pg_env)
    assert (entry.tenant_id, entry.key, entry.hits) == (world.tenant_id, first["key"], 1)
    assert entry.uri == pg_env.store.uri(cache_object_key(world.tenant_id, first["key"]))
    assert entry.size == first["bytes"] == _entry_path(pg_env, entry).stat().st_size
    assert entry.last_used_at > entry.created_at


def test_another_tenant_never_hits_an_entry_built_from_identical_files(
    pg_env: Env, world: World
) -> None:
    """Tenant B uploads the very same teacher and dataset bytes: its job builds its own
    entry (another key, under its own prefix), and A's entry is never touched."""
    a = _kd_job(pg_env, world)
    b_world = create_world(pg_env)  # the factories upload identical bytes
    b = _kd_job(pg_env, b_world)
    assert (a["status"], b["status"]) == ("miss", "miss")
    assert a["key"] != b["key"]
    entries = {e.tenant_id: e for e in _entries(pg_env)}
    assert set(entries) == {world.tenant_id, b_world.tenant_id}
    assert entries[world.tenant_id].hits == 0
    assert f"/tenants/{b_world.tenant_id}/cache/" in entries[b_world.tenant_id].uri


def test_a_tampered_entry_in_storage_is_rebuilt_and_replaced(pg_env: Env, world: World) -> None:
    first = _kd_job(pg_env, world)
    [entry] = _entries(pg_env)
    path = _entry_path(pg_env, entry)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # a logit's bits: the file parses, its sha256 check fails
    path.write_bytes(bytes(raw))
    second = _kd_job(pg_env, world)
    assert second["status"] == "miss"  # not used: discarded, rebuilt, published again
    assert second["key"] == first["key"]
    [rebuilt] = _entries(pg_env)
    assert _entry_path(pg_env, rebuilt).read_bytes() != bytes(raw)
    assert _kd_job(pg_env, world)["status"] == "hit"


def test_two_jobs_building_the_same_entry_at_once_leave_one_row_and_one_object(
    pg_env: Env, world: World
) -> None:
    jobs = [world.job(pg_env, teacher_id=world.teacher_id, config=KD) for _ in range(2)]
    outcomes: list[Outcome] = []
    threads = [threading.Thread(target=lambda j=j: outcomes.append(pg_env.run(j))) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == [Outcome.succeeded, Outcome.succeeded]
    statuses = sorted(_report(pg_env, j)["teacher_cache"]["status"] for j in jobs)
    assert statuses in (["miss", "miss"], ["hit", "miss"])
    [entry] = _entries(pg_env)
    folder = _entry_path(pg_env, entry).parent
    assert [p.name for p in folder.iterdir()] == [f"{entry.key}.safetensors"]


def test_with_the_cache_turned_off_jobs_run_the_teacher_in_the_loop(
    pg_env: Env, world: World
) -> None:
    env = Env(
        settings=pg_env.settings.model_copy(update={"teacher_cache": False}),
        sessions=pg_env.sessions,
        store=pg_env.store,
    )
    assert _kd_job(env, world)["status"] == "off"
    assert _entries(env) == []


# -- the worker's side: recording and eviction (both databases) ----------------------------


def _handler(env: Env, tenant_id: uuid.UUID, box: Path, **caps: int) -> JobCache:
    box.mkdir(parents=True, exist_ok=True)
    return JobCache(
        settings=env.settings.model_copy(update=caps),
        sessions=env.sessions,
        store=env.store,
        tenant_id=tenant_id,
        folder=SandboxOutput(box),
        scratch=box.parent / f"{box.name}-scratch",
        retries=NO_WAIT,
    )


def _put(cache: JobCache, box: Path, size: int) -> str:
    """Hand the worker a "built" entry of ``size`` bytes (it never parses one)."""
    key = uuid.uuid4().hex * 2
    (box / f"{key}.safetensors").write_bytes(b"x" * size)
    cache.put(key)
    return key


def _age(env: Env, tenant_id: uuid.UUID, key: str, minutes: int) -> None:
    with transaction(env.sessions) as s:
        entry = CacheRepository(s, tenant_id).by_key(key)
        assert entry is not None
        entry.last_used_at = utcnow() - timedelta(minutes=minutes)


def test_eviction_removes_least_recently_used_entries_first(env: Env, tmp_path: Path) -> None:
    tenant = env.add(lambda s: create_tenant(s).id)
    box = tmp_path / "box"
    cache = _handler(env, tenant, box, teacher_cache_max_bytes_per_tenant=250)
    a, b = _put(cache, box, 100), _put(cache, box, 100)
    _age(env, tenant, a, 30)  # a is older than b ...
    _age(env, tenant, b, 20)
    assert cache.get(a)  # ... but a hit makes it the most recently used
    c = _put(cache, box, 100)  # 300 > 250: the least recently used (b) goes
    keys = {e.key for e in _entries(env)}
    assert keys == {a, c}
    assert not env.store.exists(env.store.uri(cache_object_key(tenant, b)))
    assert env.store.exists(env.store.uri(cache_object_key(tenant, a)))


def test_the_total_cap_evicts_across_tenants_and_an_oversized_entry_is_not_kept(
    env: Env, tmp_path: Path
) -> None:
    first, second = (env.add(lambda s: create_tenant(s).id) for _ in range(2))
    caps = {"teacher_cache_max_bytes": 250}
    one = _handler(env, first, tmp_path / "one", **caps)
    two = _handler(env, second, tmp_path / "two", **caps)
    old = _put(one, tmp_path / "one", 100)
    _age(env, first, old, 30)
    kept = _put(one, tmp_path / "one", 100)
    new = _put(two, tmp_path / "two", 100)  # 300 > 250 in total: the oldest anywhere goes
    assert {(e.tenant_id, e.key) for e in _entries(env)} == {(first, kept), (second, new)}
    _put(two, tmp_path / "two", 300)  # over the cap by itself: never stored
    assert len(_entries(env)) == 2
