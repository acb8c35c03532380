"""Running one distillation job: claim it, feed ``kdcore``, record progress, publish results.

One attempt goes like this:

1. **Claim** the job with a compare-and-set that writes a fresh *lease* token
   (:meth:`RunRepository.claim`). A duplicate delivery, a job another live worker runs, and
   a final or canceled job are all left alone.
2. A **heartbeat** thread renews the lease every ``heartbeat_interval_s`` and picks up
   ``cancel_requested``. If the renewal matches no row, the reaper has given the job to
   another attempt: this one stops at the next training step and writes nothing more.
3. The inputs are **downloaded** into a scratch folder, with the checkpoint of an earlier
   attempt if storage has one, and ``kdcore.pipeline.run`` **trains**, resuming from it,
   in the job sandbox (:mod:`worker.sandbox`): a child process with no secrets, limits on
   memory and time, and, where bubblewrap works, no network and no view of the worker's
   files. After every epoch the metrics go to the database and the checkpoint to
   storage, so a worker that dies loses one epoch at most.
4. On success every file of the output folder is **uploaded**, then one transaction lists
   the artifacts and marks the job succeeded. On failure the job gets an ``error_code``
   and the message kdcore wrote for the user.

Every write is guarded by the lease, and a killed worker (``SystemExit``,
``KeyboardInterrupt``, a lost child) leaves the job ``running``: the broker redelivers the
message, or the reaper requeues the job once its heartbeat is stale, and the next attempt
resumes from the last checkpoint.
"""

from __future__ import annotations

import enum
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session, sessionmaker

from kdcore.contract import DistillConfig, epochs_before_stage, parse_arch, parse_config
from kdcore.pipeline import DEFAULT_FORMATS
from kdcore.report import Report
from kdcore.train import CHECKPOINT_NAME, METRICS_NAME, Progress
from store.blobs import BlobStore, StorageError, StoredObject
from store.db import transaction
from store.models import DatasetRecord, Job, JobStatus, Teacher, utcnow
from store.repositories.assets import AssetRepository
from store.repositories.metrics import STAGE_SECONDS
from store.repositories.runs import Claim, LeaseState, NewArtifact, RunRepository
from store.settings import Settings
from worker.cache import JobCache
from worker.files import SandboxOutput, UnsafeOutput, download, local_name, work_dir
from worker.retry import DB_ERRORS, STORAGE_ERRORS, Retries, retrying
from worker.sandbox import SandboxFailed, run_in_sandbox
from worker.sandbox.policy import isolation_for, limits_for, teacher_input
from worker.sandbox.protocol import CACHE_DIR, FAILURES, CacheInput, DistillRequest

log = logging.getLogger(__name__)

STEP_WRITE_INTERVAL_S = 2.0  # at most one step-progress write per job this often
# Files of the output folder that are never artifacts: partial writes (kdcore's temporary
# files are also hidden, which excludes them too).
_NOT_ARTIFACTS = (".tmp", ".part", ".partial")
# Artifact names are file names the sandbox wrote: keep the plain ones only.
_ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_MAX_ARTIFACTS = 32  # kdcore writes about ten
_MAX_METRICS = 32  # per progress report; kdcore sends a handful
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_MAX_WARNINGS, _MAX_WARNING_CHARS = 8, 1000  # kdcore sends one per format left out
_PROGRESS: TypeAdapter[Progress] = TypeAdapter(Progress)


class Outcome(enum.StrEnum):
    """What one call of :func:`run_job` did."""

    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    skipped = "skipped"  # nothing to run: not claimable (running elsewhere, final, unknown)
    lost = "lost"  # the lease went to another attempt mid-run; nothing final was written


def job_key(tenant_id: uuid.UUID, job_id: uuid.UUID, *parts: str) -> str:
    """Storage key under a job: ``tenants/<t>/jobs/<j>/work/...`` or ``.../artifacts/...``."""
    return "/".join((f"tenants/{tenant_id}/jobs/{job_id}", *parts))


def run_job(
    job_id: str,
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    store: BlobStore,
    formats: Sequence[str] = DEFAULT_FORMATS,
    retries: Retries = Retries(),
) -> Outcome:
    """Run (or resume) the job ``job_id`` if it can be claimed; safe to call twice.

    Raises only what must not be swallowed: ``SystemExit``, ``KeyboardInterrupt`` and other
    non-``Exception`` errors (the worker is going away: the job stays ``running`` for the
    next attempt), and database errors that outlast ``retries`` (the job stays ``running``
    and the reaper requeues it once its heartbeat is stale).
    """
    try:
        jid = uuid.UUID(str(job_id))
    except ValueError:
        log.error("ignoring a job message for %r: not a UUID", job_id)
        return Outcome.skipped

    lease = _Lease(jid, str(uuid.uuid4()), sessions, retries)
    claim = lease.claim(settings)
    if claim is Claim.exhausted:
        log.warning("job %s: out of attempts, marked failed (worker_lost)", jid)
        return Outcome.failed
    if claim is Claim.skipped:
        log.info("job %s: not claimable (running elsewhere, or finished); nothing to do", jid)
        return Outcome.skipped

    rows = retrying(
        lambda: _load_rows(sessions, jid),
        errors=DB_ERRORS,
        delays=retries.db,
        what=f"loading job {jid}",
    )
    log.info("job %s: attempt %d started (lease %s)", jid, rows.job.attempts, lease.token)
    if rows.job.cancel_requested:
        return lease.end(JobStatus.canceled, "canceled", "canceled before it started")

    attempt = _Attempt(
        lease=lease, rows=rows, settings=settings, store=store, formats=formats, retries=retries
    )
    with (
        _Heartbeat(lease, settings.heartbeat_interval_s),
        work_dir(settings, f"job-{jid}-") as work,
    ):
        outcome = attempt.run(work)
    log.info("job %s: attempt %d ended: %s", jid, rows.job.attempts, outcome)
    return outcome


# -- the lease ------------------------------------------------------------------------------


class _Lease:
    """One attempt's hold on a job: the guarded writes, and the flags that stop training."""

    def __init__(
        self,
        job_id: uuid.UUID,
        token: str,
        sessions: sessionmaker[Session],
        retries: Retries,
    ) -> None:
        self.job_id, self.token = job_id, token
        self.sessions, self.retries = sessions, retries
        self.lost = threading.Event()
        self.cancel = threading.Event()

    def should_cancel(self) -> bool:
        return self.lost.is_set() or self.cancel.is_set()

    def claim(self, settings: Settings) -> Claim:
        def once() -> Claim:
            now = utcnow()
            with transaction(self.sessions) as session:
                return RunRepository(session).claim(
                    self.job_id,
                    lease=self.token,
                    now=now,
                    stale_before=now - timedelta(seconds=settings.heartbeat_timeout_s),
                    max_attempts=settings.max_attempts,
                )

        return retrying(
            once, errors=DB_ERRORS, delays=self.retries.db, what=f"claiming job {self.job_id}"
        )

    def write(
        self,
        what: str,
        fn: Callable[[RunRepository], LeaseState],
        *,
        stop: threading.Event | None = None,
    ) -> LeaseState | None:
        """A guarded progress write; None when the database stayed unreachable (the job
        goes on: the next write may get through)."""

        def once() -> LeaseState:
            with transaction(self.sessions) as session:
                return fn(RunRepository(session))

        try:
            state = retrying(
                once,
                errors=DB_ERRORS,
                delays=self.retries.db,
                what=f"{what} of job {self.job_id}",
                stop=stop,
            )
        except DB_ERRORS as exc:
            log.error(
                "job %s: %s not written, the database is unreachable: %s", self.job_id, what, exc
            )
            return None
        if not state.held:
            if not self.lost.is_set():
                log.warning(
                    "job %s: lease %s lost (the job was given to another attempt or "
                    "ended); stopping without writing",
                    self.job_id,
                    self.token,
                )
            self.lost.set()
        elif state.cancel_requested and not self.cancel.is_set():
            log.info("job %s: cancel requested", self.job_id)
            self.cancel.set()
        return state

    def touch(self, **values: Any) -> Callable[[RunRepository], LeaseState]:
        return lambda repo: repo.touch(self.job_id, lease=self.token, now=utcnow(), **values)

    def end(
        self,
        status: JobStatus,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> Outcome:
        """Write a final failed / canceled state (guarded); retried hard, then raised."""

        def once() -> bool:
            with transaction(self.sessions) as session:
                return RunRepository(session).finish(
                    self.job_id,
                    lease=self.token,
                    status=status,
                    now=utcnow(),
                    error_code=error_code,
                    error_message=error_message,
                )

        return self.finish(once, Outcome(status.value))

    def finish(self, once: Callable[[], bool], outcome: Outcome) -> Outcome:
        if retrying(
            once,
            errors=DB_ERRORS,
            delays=self.retries.final_db,
            what=f"final state of job {self.job_id}",
        ):
            return outcome
        log.warning(
            "job %s: final state %s not written: lease %s no longer holds the job",
            self.job_id,
            outcome,
            self.token,
        )
        self.lost.set()
        return Outcome.lost


class _Heartbeat:
    """A daemon thread renewing the lease while the attempt runs."""

    def __init__(self, lease: _Lease, interval_s: float) -> None:
        self.lease, self.interval_s = lease, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, daemon=True, name=f"heartbeat-{lease.job_id}"
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s) and not self.lease.lost.is_set():
            try:
                self.lease.write("heartbeat", self.lease.touch(), stop=self._stop)
            except Exception:  # never let the thread die: the job would look dead
                log.exception("job %s: heartbeat failed", self.lease.job_id)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, self.interval_s))


# -- one attempt ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    job: Job
    dataset: DatasetRecord
    val_dataset: DatasetRecord | None
    teacher: Teacher | None


def _load_rows(sessions: sessionmaker[Session], job_id: uuid.UUID) -> _Rows:
    with sessions() as session:
        job = RunRepository(session).get(job_id)
        assert job is not None  # just claimed; jobs are deleted only when final
        assets = AssetRepository(session)
        dataset = assets.with_blob(DatasetRecord, job.dataset_id)
        assert dataset is not None  # a foreign key
        val = assets.with_blob(DatasetRecord, job.val_dataset_id) if job.val_dataset_id else None
        teacher = assets.with_blob(Teacher, job.teacher_id) if job.teacher_id else None
        return _Rows(job=job, dataset=dataset, val_dataset=val, teacher=teacher)


@dataclass
class _Attempt:
    lease: _Lease
    rows: _Rows
    settings: Settings
    store: BlobStore
    formats: Sequence[str]
    retries: Retries

    @property
    def job(self) -> Job:
        return self.rows.job

    def key(self, *parts: str) -> str:
        return job_key(self.job.tenant_id, self.job.id, *parts)

    def run(self, work: Path) -> Outcome:
        box = work / "box"  # the only folder the sandbox sees
        out = box / "out"
        out.mkdir(parents=True)
        (box / CACHE_DIR).mkdir()
        # Both opened before the child can touch them.
        with SandboxOutput(out) as output, SandboxOutput(box / CACHE_DIR) as cache_folder:
            return self._run(work, box, output, cache_folder)

    def _run(
        self, work: Path, box: Path, output: SandboxOutput, cache_folder: SandboxOutput
    ) -> Outcome:
        reporter: _Reporter | None = None
        try:
            config = parse_config(self.job.config)
            request = self._fetch_inputs(box, config)
            self._restore(box / "out")
            reporter = _Reporter(self, config, output)
            cache = None
            if request.cache is not None:
                cache = JobCache(
                    settings=self.settings,
                    sessions=self.lease.sessions,
                    store=self.store,
                    tenant_id=self.job.tenant_id,
                    folder=cache_folder,
                    scratch=work / "cache",
                    retries=self.retries,
                )
            result = run_in_sandbox(
                request,
                box,
                isolation=isolation_for(self.settings),
                time_limit_s=self.settings.job_time_limit_s,
                log_path=work / "sandbox.log",
                on_progress=reporter.on_message,
                should_cancel=self.lease.should_cancel,
                cache=cache,
            )
            report = Report.model_validate(result)
        except SandboxFailed as exc:
            return self._failed(exc)
        except ValidationError as exc:  # a report that is not one: the child misbehaved
            return self.lease.end(
                JobStatus.failed, "internal", f"internal error: unreadable report ({exc})"
            )
        except SoftTimeLimitExceeded:
            return self.lease.end(
                JobStatus.failed,
                "time_limit",
                f"the job ran longer than the time limit of {self.settings.job_time_limit_s} s "
                "(KDSERVE_JOB_TIME_LIMIT_S); use fewer epochs or less data",
            )
        except StorageError as exc:
            log.error("job %s: storage failed: %s", self.job.id, exc)
            return self.lease.end(
                JobStatus.failed,
                "storage",
                f"could not read the job's inputs from storage ({exc}); submit it again",
            )
        except ValueError as exc:  # a bad config, or a teacher this worker cannot sandbox
            return self.lease.end(JobStatus.failed, "invalid_input", str(exc))
        except Exception as exc:
            log.exception("job %s failed", self.job.id)
            return self.lease.end(
                JobStatus.failed, "internal", f"internal error: {type(exc).__name__}: {exc}"
            )
        assert reporter is not None
        return self._publish(output, report, reporter.latest)

    def _failed(self, exc: SandboxFailed) -> Outcome:
        if exc.code == "canceled":
            if self.lease.lost.is_set():
                return Outcome.lost
            return self.lease.end(JobStatus.canceled, "canceled", f"{exc} at the user's request")
        if exc.code == "time_limit":
            return self.lease.end(
                JobStatus.failed,
                "time_limit",
                f"the job ran longer than the time limit of {self.settings.job_time_limit_s} s "
                "(KDSERVE_JOB_TIME_LIMIT_S); use fewer epochs or less data",
            )
        if self.lease.lost.is_set():
            return Outcome.lost
        template = FAILURES[exc.code].message
        message = template.format(exc) if template else str(exc)
        return self.lease.end(JobStatus.failed, exc.code, message)

    # -- inputs --------------------------------------------------------------------------

    def _fetch_inputs(self, box: Path, config: DistillConfig) -> DistillRequest:
        """Download the inputs into ``box/in`` and describe the job for the sandbox."""
        rows, delays = self.rows, self.retries.storage

        def fetch(record: DatasetRecord, sub: str) -> str:
            (box / "in" / sub).mkdir(parents=True)
            # Loaders pick the format by suffix (.npz, .tar.gz, ...): keep the upload's name.
            path = Path("in", sub, local_name(record.filename, "data.npz"))
            download(self.store, _uri(record), box / path, delays=delays)
            return str(path)

        data = fetch(rows.dataset, "train")
        val = fetch(rows.val_dataset, "val") if rows.val_dataset is not None else None
        teacher = None
        if config.uses_teacher and rows.teacher is not None:
            (box / "in" / "teacher").mkdir(parents=True)
            path = Path("in", "teacher", "weights")  # formats are told apart by content
            download(self.store, _uri(rows.teacher), box / path, delays=delays)
            teacher = teacher_input(self.settings, str(path), rows.teacher.arch)
        return DistillRequest(
            limits=limits_for(self.settings),
            student=parse_arch(self.job.student),
            config=config,
            data=data,
            val=val,
            teacher=teacher,
            formats=list(self.formats),
            # The tenant goes into every key: tenants never share an entry.
            cache=CacheInput(
                tenant=str(self.job.tenant_id),
                entry_max_bytes=self.settings.teacher_cache_max_entry_bytes,
            )
            if teacher is not None and self.settings.teacher_cache
            else None,
        )

    def _restore(self, out: Path) -> None:
        """Fetch an earlier attempt's checkpoint, so ``kdcore`` resumes from it."""
        uri = self.store.uri(self.key("work", CHECKPOINT_NAME))
        try:
            if not self.store.exists(uri):
                return
            download(self.store, uri, out / CHECKPOINT_NAME, delays=self.retries.storage)
            metrics_uri = self.store.uri(self.key("work", METRICS_NAME))
            if self.store.exists(metrics_uri):
                download(self.store, metrics_uri, out / METRICS_NAME, delays=self.retries.storage)
        except StorageError as exc:
            # Starting over is slower but gives the same result.
            log.warning(
                "job %s: cannot fetch the checkpoint (%s); starting from scratch", self.job.id, exc
            )
            for name in (CHECKPOINT_NAME, METRICS_NAME):
                (out / name).unlink(missing_ok=True)
            return
        log.info("job %s: resuming from the checkpoint of an earlier attempt", self.job.id)

    def sync_work(self, out: SandboxOutput) -> None:
        """Copy the checkpoint to storage for the next attempt; on failure, the next epoch
        tries again. metrics.jsonl goes first, so stored metrics never lag the checkpoint
        (kdcore trims extra rows on resume, but cannot add missing ones)."""
        if self.lease.lost.is_set():
            return
        try:
            for name in (METRICS_NAME, CHECKPOINT_NAME):
                with out.open(name) as f:
                    self.store.upload_fileobj(self.key("work", name), f)
        except STORAGE_ERRORS as exc:
            log.warning(
                "job %s: checkpoint not saved to storage (%s); retrying next epoch",
                self.job.id,
                exc,
            )

    # -- results -------------------------------------------------------------------------

    def _publish(self, out: SandboxOutput, report: Report, latest: dict[str, Any]) -> Outcome:
        state = self.lease.write("heartbeat", self.lease.touch())
        if self.lease.lost.is_set() or (state is not None and not state.held):
            return Outcome.lost
        try:
            artifacts = self._upload_artifacts(out)
        except UnsafeOutput as exc:
            return self.lease.end(JobStatus.failed, "internal", f"internal error: {exc}")
        except StorageError as exc:
            log.error("job %s: could not upload artifacts: %s", self.job.id, exc)
            return self.lease.end(
                JobStatus.failed,
                "storage",
                f"training finished but its results could not be stored ({exc}); submit the "
                "job again",
            )
        if artifacts is None:
            return Outcome.lost
        metrics = {**latest, **_report_metrics(report)}

        def once() -> bool:
            with transaction(self.lease.sessions) as session:
                return RunRepository(session).succeed(
                    self.job.id,
                    lease=self.lease.token,
                    now=utcnow(),
                    artifacts=artifacts,
                    metrics=metrics,
                    choices={**(self.job.choices or {}), **report.choices},
                    warnings=[w[:_MAX_WARNING_CHARS] for w in report.warnings[:_MAX_WARNINGS]],
                )

        outcome = self.lease.finish(once, Outcome.succeeded)
        if outcome is Outcome.succeeded:
            self._forget_work()
        return outcome

    def _upload_artifacts(self, out: SandboxOutput) -> list[NewArtifact] | None:
        """Upload every result file; None if the lease was lost on the way.

        Raises:
            UnsafeOutput: a file turned into something else (a link...) after it was listed.
            StorageError: storage failed on every try for some file.
        """
        names = [
            name
            for name in out.plain_files()
            if _ARTIFACT_NAME.fullmatch(name) and not name.endswith(_NOT_ARTIFACTS)
        ]
        if len(names) > _MAX_ARTIFACTS:
            raise UnsafeOutput(f"the job left {len(names)} files, over {_MAX_ARTIFACTS}")
        artifacts = []
        for name in names:
            if self.lease.lost.is_set():  # another attempt owns these keys now
                return None
            key = self.key("artifacts", name)
            try:
                stored = retrying(
                    partial(self._upload_output, out, key, name),
                    errors=STORAGE_ERRORS,
                    delays=self.retries.storage,
                    what=f"upload of {key}",
                )
            except UnsafeOutput:
                raise
            except OSError as exc:
                raise StorageError(f"could not upload {name}: {exc}") from exc
            artifacts.append(NewArtifact(name, stored.uri, stored.size, stored.sha256))
        return artifacts

    def _upload_output(self, out: SandboxOutput, key: str, name: str) -> StoredObject:
        with out.open(name) as f:
            return self.store.upload_fileobj(key, f)

    def _forget_work(self) -> None:
        """Drop the resume files: the artifacts hold the final checkpoint."""
        for name in (CHECKPOINT_NAME, METRICS_NAME):
            try:
                self.store.delete(self.store.uri(self.key("work", name)))
            except STORAGE_ERRORS as exc:
                log.warning("job %s: could not delete work/%s (%s)", self.job.id, name, exc)


# -- progress -----------------------------------------------------------------------------


class _Reporter:
    """The ``on_progress`` callback: writes what ``kdcore`` reports, guarded by the lease.

    Step reports are throttled to one write per :data:`STEP_WRITE_INTERVAL_S`; each epoch
    writes its metric points and then saves the checkpoint to storage.
    """

    def __init__(self, attempt: _Attempt, config: DistillConfig, out: SandboxOutput) -> None:
        self.attempt, self.out = attempt, out
        self.lease = attempt.lease
        self.latest: dict[str, Any] = dict(attempt.job.metrics or {})
        self.offsets = epochs_before_stage(config)
        self.max_epochs = max(config.epochs, config.hint.epochs if config.hint else 0)
        self._last_write = -math.inf

    def on_message(self, fields: dict[str, Any]) -> None:
        """A progress message from the sandbox, checked first: the child is untrusted, and
        what it reports becomes rows and the job's metrics.

        Raises:
            ValueError: not a progress report kdcore could have sent.
        """
        p = _PROGRESS.validate_python(fields)
        if not 0 <= p.stage_index < len(self.offsets) or not 1 <= p.epoch <= p.epochs:
            raise ValueError(f"stage {p.stage_index} / epoch {p.epoch} out of range")
        if p.epochs > self.max_epochs or len(p.metrics) > _MAX_METRICS:
            raise ValueError("more epochs or metrics than the job has")
        for key, value in p.metrics.items():
            if not _METRIC_NAME.fullmatch(key) or not math.isfinite(value):
                raise ValueError(f"metric {key[:40]!r} = {value}")
        if not math.isfinite(p.samples_per_s) or not 0 <= p.fraction <= 1:
            raise ValueError("samples_per_s or fraction out of range")
        self(p)

    def __call__(self, p: Progress) -> None:
        progress = {"stage": p.stage, "epoch": p.epoch, "progress": p.fraction}
        if p.kind == "step":
            self.latest.update({f"train_{k}": float(v) for k, v in p.metrics.items()})
            self.latest["samples_per_s"] = p.samples_per_s
            if time.monotonic() - self._last_write < STEP_WRITE_INTERVAL_S:
                return
            self._last_write = time.monotonic()
            self.lease.write("progress", self.lease.touch(metrics=dict(self.latest), **progress))
            return

        points = {k: float(v) for k, v in p.metrics.items()}
        points["samples_per_s"] = p.samples_per_s
        self.latest.update(points)
        self._last_write = time.monotonic()
        step = self.offsets[p.stage_index] + p.epoch  # epochs completed, across stages
        lease, metrics = self.lease, dict(self.latest)
        self.lease.write(
            "epoch metrics",
            lambda repo: repo.record_epoch(
                lease.job_id,
                lease=lease.token,
                now=utcnow(),
                step=step,
                points=points,
                metrics=metrics,
                **progress,
            ),
        )
        self.attempt.sync_work(self.out)


def _report_metrics(report: Report) -> dict[str, Any]:
    """The report's headline numbers, flattened: ``student_accuracy``, ``compression``..."""
    out: dict[str, Any] = {}
    models = (("student", report.student), ("teacher", report.teacher))
    for who, model in (*models, ("baseline", report.baseline)):
        if model is not None:
            out.update({f"{who}_{k}": v for k, v in model.model_dump().items() if v is not None})
    for key in ("compression", "speedup", "gain_points"):
        value = getattr(report, key)
        if value is not None:
            out[key] = value
    if report.exported.get("epoch") is not None:
        out["exported_epoch"] = report.exported["epoch"]
    # Training time per stage: GET /metrics's kdserve_stage_duration_seconds reads these.
    for stage, seconds in report.stage_seconds.items():
        out[f"{STAGE_SECONDS}{stage}"] = seconds
    return out


def _uri(record: DatasetRecord | Teacher) -> str:
    """Where an input's file is. Only invalid uploads have none, and jobs never get those
    (the API refuses them); this guards a row that turned invalid after submission."""
    if record.blob is None:
        raise ValueError(f"{record.id} was found invalid and its file deleted: {record.error}")
    return record.blob.uri
