"""``KDServeClient``: a small synchronous client for kdserve's REST API, over httpx.

Uploads stream from disk in 1 MiB chunks and downloads stream to disk, so checkpoints of any
size never sit in memory. Reads, and job submission (made safe by an ``Idempotency-Key``), are
retried on transport errors and 502/503/504, honouring ``Retry-After``; uploads and other
writes are sent once. A ``429`` (a tenant cap: running jobs, sweep points, uploads in
progress, validations waiting) is not retried: such a cap can last as long as a job runs, so
the caller gets the error, whose ``retry_after`` and message say when and what to do.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

from client.errors import KDServeAPIError, KDServeClientError, KDServeConnectionError

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
CHUNK = 1 << 20

READY_STATES = ("ready", "invalid")
FINAL_JOB_STATES = ("succeeded", "failed", "canceled")

# Worth another try: the request never reached the app or the app asked us to come back.
_RETRY_STATUSES = frozenset({502, 503, 504})
_RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

JSON = dict[str, Any]
UploadKind = Literal["teachers", "datasets"]
Kind = Literal[UploadKind, "jobs"]
KINDS: tuple[Kind, ...] = ("teachers", "datasets", "jobs")


def default_api_key() -> str | None:
    """``KDSERVE_API_KEY``, else the key ``kdserve up`` wrote to ``$KDSERVE_HOME/api-key``."""
    key = os.environ.get("KDSERVE_API_KEY")
    if key:
        return key.strip()
    path = Path(os.environ.get("KDSERVE_HOME") or ".kdserve").expanduser() / "api-key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class KDServeClient:
    """Talks to one kdserve API.

    Args:
        base_url: The API's root URL; default ``KDSERVE_URL``, else ``http://127.0.0.1:8000``.
        api_key: A key from ``kdserve keys create``; default ``KDSERVE_API_KEY``, else the
            file ``$KDSERVE_HOME/api-key``. An empty string sends no key.
        timeout: Per-request httpx timeout (per chunk for streamed bodies).
        http: An ``httpx.Client`` to send requests with instead of a new one (tests pass
            Starlette's ``TestClient``); its ``base_url`` is used when ``base_url`` is None.
            The caller keeps ownership: :meth:`close` leaves it open.
        retries: Extra attempts for retryable requests.
        max_retry_wait_s: Cap on one wait between attempts, ``Retry-After`` included.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        http: httpx.Client | None = None,
        retries: int = 3,
        max_retry_wait_s: float = 30.0,
    ) -> None:
        injected = str(http.base_url).rstrip("/") if http is not None else ""
        self.base_url = (
            base_url or injected or os.environ.get("KDSERVE_URL") or DEFAULT_URL
        ).rstrip("/")
        self.api_key = default_api_key() if api_key is None else (api_key.strip() or None)
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self._owns_http = http is None
        self._http = http or httpx.Client(
            timeout=timeout,
            headers={"User-Agent": "kdserve-client/1"},
            # Drop idle connections well before the server does (uvicorn: 5 s by default,
            # `kdserve api`: 30 s), or a request can race the server's close: ReadError.
            limits=httpx.Limits(keepalive_expiry=2.0),
        )
        self._sleep: Callable[[float], None] = time.sleep  # tests replace it

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- teachers ----------------------------------------------------------------------------

    def upload_teacher(
        self,
        path: str | os.PathLike[str],
        *,
        input_shape: Sequence[int] | str,
        num_classes: int,
        arch: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> JSON:
        """Upload teacher weights (streamed). ``arch`` is needed for safetensors/state dicts.

        The teacher comes back ``validating``; see :meth:`wait_for`.
        """
        shape = input_shape if isinstance(input_shape, str) else ",".join(map(str, input_shape))
        params = {
            "input_shape": shape,
            "num_classes": str(num_classes),
            "arch": json.dumps(arch, separators=(",", ":")) if arch is not None else None,
            "name": name,
        }
        return self._upload("teachers", Path(path), params)

    def teacher_from_job(self, job_id: str, name: str | None = None) -> JSON:
        """Promote a succeeded job's student to a teacher."""
        body: JSON = {"from_job": str(job_id)}
        if name is not None:
            body["name"] = name
        return self._json("POST", "/v1/teachers", json=body)

    def get_teacher(self, teacher_id: str) -> JSON:
        return self.get_resource("teachers", teacher_id)

    def list_teachers(self, *, page_size: int | None = None) -> list[JSON]:
        return self.list_resources("teachers", page_size=page_size)

    def delete_teacher(self, teacher_id: str) -> None:
        self.delete_upload("teachers", teacher_id)

    # -- datasets ----------------------------------------------------------------------------

    def upload_dataset(self, path: str | os.PathLike[str], name: str | None = None) -> JSON:
        """Upload a dataset (.npz or image-folder archive), streamed; its suffix names the
        format. It comes back ``validating``; see :meth:`wait_for`."""
        file = Path(path)
        return self._upload("datasets", file, {"filename": file.name, "name": name})

    def get_dataset(self, dataset_id: str) -> JSON:
        return self.get_resource("datasets", dataset_id)

    def list_datasets(self, *, page_size: int | None = None) -> list[JSON]:
        return self.list_resources("datasets", page_size=page_size)

    def delete_dataset(self, dataset_id: str) -> None:
        self.delete_upload("datasets", dataset_id)

    # -- jobs --------------------------------------------------------------------------------

    def submit_job(
        self,
        *,
        dataset_id: str,
        student: dict[str, Any],
        config: dict[str, Any],
        teacher_id: str | None = None,
        val_dataset_id: str | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Submit a job. Retried on transport errors and 503 under one ``Idempotency-Key``
        (a fresh one unless given), so a lost response never creates a second job."""
        body: JSON = {
            "dataset_id": str(dataset_id),
            "student": student,
            "config": config,
            "teacher_id": str(teacher_id) if teacher_id is not None else None,
            "val_dataset_id": str(val_dataset_id) if val_dataset_id is not None else None,
        }
        if name is not None:
            body["name"] = name
        key = idempotency_key or str(uuid.uuid4())
        return self._json(
            "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}, retry=True
        )

    def get_job(self, job_id: str) -> JSON:
        return self.get_resource("jobs", job_id)

    def list_jobs(self, status: str | None = None, *, page_size: int | None = None) -> list[JSON]:
        """Every job of the tenant, newest first (all pages), optionally of one status."""
        return self.list_resources("jobs", page_size=page_size, status=status)

    def cancel_job(self, job_id: str) -> JSON:
        return self._json("POST", f"/v1/jobs/{_seg(job_id)}/cancel")

    def job_metrics(self, job_id: str) -> dict[str, list[JSON]]:
        """``{metric: [{step, value, time}, ...]}``."""
        series: dict[str, list[JSON]] = self._json(
            "GET", f"/v1/jobs/{_seg(job_id)}/metrics", retry=True
        )["series"]
        return series

    def list_job_events(self, job_id: str, *, after: int = 0, page_size: int = 1000) -> list[JSON]:
        """The job's events written so far, after event ``after``, in order (all pages):
        ``{id, kind, status, data, created_at}``."""
        out: list[JSON] = []
        cursor: int | None = after
        while cursor is not None:
            page = self._json(
                "GET",
                f"/v1/jobs/{_seg(job_id)}/events",
                params={"after": cursor, "limit": page_size},
                retry=True,
            )
            out += page["items"]
            cursor = page["next_after"]
        return out

    def job_events(
        self, job_id: str, *, after: int = 0, reconnect_wait: float = 1.0
    ) -> Iterator[JSON]:
        """Follow the job's events as they are written (server-sent events), from the one
        after ``after`` until the job's last: its report, or a failed or canceled state.

        A dropped connection is reopened with ``Last-Event-ID``, so no event is lost or
        repeated; transport errors and 502/503/504 are retried like reads (``retries``
        times in a row, honouring ``Retry-After``). A stream the server ends early (its
        ``KDSERVE_EVENT_STREAM_MAX_S``) is reopened too, after ``reconnect_wait`` seconds,
        unless the job is final.
        """
        url = self._url(f"/v1/jobs/{_seg(job_id)}/events")
        last, failures, final = after, 0, False
        while True:
            headers = {**self._auth(), "Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            try:
                with self._http.stream("GET", url, headers=headers) as resp:
                    if resp.is_error:
                        resp.read()
                        if resp.status_code not in _RETRY_STATUSES or failures >= self.retries:
                            raise _problem(resp)
                        failures += 1
                        self._sleep(_retry_after(resp) or min(0.5 * 2**failures, 8.0))
                        continue
                    for event in parse_sse(resp.iter_lines()):
                        failures = 0
                        last = int(event["id"])
                        yield event
                        if is_last_event(event):
                            return
            except _RETRY_ERRORS as exc:
                failures += 1
                if failures > self.retries:
                    raise self._unreachable(exc) from exc
                self._sleep(min(0.5 * 2**failures, 8.0))
                continue
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
            # The server ended the stream before the job's last event: the job ended
            # without one (a job older than the event log), or the stream reached its time
            # limit. Once the job is final, one more stream drains what is left.
            if final:
                return
            final = self.get_job(job_id)["status"] in FINAL_JOB_STATES
            if not final:
                self._sleep(reconnect_wait)

    def job_report(self, job_id: str) -> JSON:
        """The engine's report.json (teacher vs student)."""
        return self._json("GET", f"/v1/jobs/{_seg(job_id)}/report", retry=True)

    def list_artifacts(self, job_id: str) -> list[JSON]:
        items: list[JSON] = self._json("GET", f"/v1/jobs/{_seg(job_id)}/artifacts", retry=True)[
            "items"
        ]
        return items

    def download_artifact(
        self,
        job_id: str,
        name: str,
        dest: str | os.PathLike[str],
        *,
        sha256: str | None = None,
    ) -> Path:
        """Stream one artifact to ``dest`` (a file, or an existing folder to put ``name`` in).

        A redirect to presigned storage is followed without the API key. The file appears
        only once complete; with ``sha256`` its content is checked too.
        """
        target = Path(dest)
        if target.is_dir():
            target = target / name
        return self._download(f"/v1/jobs/{_seg(job_id)}/artifacts/{_seg(name)}", target, sha256)

    def download_all(self, job_id: str, dest_dir: str | os.PathLike[str]) -> list[Path]:
        """Every artifact of a job into ``dest_dir`` (created), each checked by sha256."""
        folder = Path(dest_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            self.download_artifact(job_id, a["name"], folder / a["name"], sha256=a.get("sha256"))
            for a in self.list_artifacts(job_id)
        ]

    # -- sweeps ------------------------------------------------------------------------------

    def submit_sweep(
        self,
        *,
        dataset_id: str,
        student: dict[str, Any],
        config: dict[str, Any],
        grid: dict[str, Any],
        teacher_id: str | None = None,
        val_dataset_id: str | None = None,
        metric: str = "val_accuracy",
        scratch: bool = False,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """Submit a sweep: one job per point of ``grid`` (``temperature``, ``alpha``, ``lr``,
        ``hint``, ``hint_epochs``, ``seed``: lists of values) over the job the other
        arguments describe, as :meth:`submit_job` takes it. Retried like a job submission,
        under one ``Idempotency-Key``, so a lost response never creates a second sweep."""
        base: JSON = {
            "dataset_id": str(dataset_id),
            "student": student,
            "config": config,
            "teacher_id": str(teacher_id) if teacher_id is not None else None,
            "val_dataset_id": str(val_dataset_id) if val_dataset_id is not None else None,
        }
        body: JSON = {"base": base, "grid": grid, "metric": metric, "scratch": scratch}
        if name is not None:
            body["name"] = name
        key = idempotency_key or str(uuid.uuid4())
        return self._json(
            "POST", "/v1/sweeps", json=body, headers={"Idempotency-Key": key}, retry=True
        )

    def get_sweep(self, sweep_id: str) -> JSON:
        """A sweep: its points (status, best-epoch metrics), leaderboard and best job."""
        return self._json("GET", f"/v1/sweeps/{_seg(sweep_id)}", retry=True)

    def list_sweeps(self, *, page_size: int | None = None) -> list[JSON]:
        """Every sweep of the tenant, newest first (all pages)."""
        return list(self._paginate("/v1/sweeps", {}, page_size))

    def cancel_sweep(self, sweep_id: str) -> JSON:
        """Cancel every point of a sweep that is not final yet."""
        return self._json("POST", f"/v1/sweeps/{_seg(sweep_id)}/cancel")

    def wait_sweep(self, sweep_id: str, *, timeout: float = 3600.0, interval: float = 2.0) -> JSON:
        """Poll a sweep until it is final (every point is); :class:`TimeoutError` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            sweep = self.get_sweep(sweep_id)
            if sweep["status"] in FINAL_JOB_STATES:
                return sweep
            if time.monotonic() >= deadline:
                counts = ", ".join(f"{n} {s}" for s, n in sweep["counts"].items() if n)
                raise TimeoutError(
                    f"sweep {sweep_id} is still {sweep['status']} after {timeout:g} s ({counts})"
                )
            self._sleep(interval)

    def list_sweep_artifacts(self, sweep_id: str) -> JSON:
        """``{"job_id": <the best point's job>, "items": [its artifacts]}``."""
        listing: JSON = self._json("GET", f"/v1/sweeps/{_seg(sweep_id)}/artifacts", retry=True)
        return listing

    def download_sweep(self, sweep_id: str, dest_dir: str | os.PathLike[str]) -> list[Path]:
        """Every artifact of the sweep's best point into ``dest_dir`` (created), through the
        sweep's URLs, each checked by the sha256 listed (a download whose best point changed
        in between fails the check)."""
        folder = Path(dest_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return [
            self._download(
                f"/v1/sweeps/{_seg(sweep_id)}/artifacts/{_seg(a['name'])}",
                folder / a["name"],
                a.get("sha256"),
            )
            for a in self.list_sweep_artifacts(sweep_id)["items"]
        ]

    # -- any kind: teachers, datasets, jobs ---------------------------------------------------

    def get_resource(self, kind: Kind, id_: str) -> JSON:
        """One teacher, dataset or job by id."""
        return self._json("GET", f"{_root(kind)}/{_seg(id_)}", retry=True)

    def list_resources(
        self, kind: Kind, *, page_size: int | None = None, **filters: str | None
    ) -> list[JSON]:
        """Every teacher, dataset or job of the tenant, newest first (all pages)."""
        return list(self._paginate(_root(kind), filters, page_size))

    def delete_upload(self, kind: UploadKind, id_: str) -> None:
        """Delete a teacher or dataset (jobs that used it keep their results)."""
        self._send("DELETE", f"{_root(kind)}/{_seg(id_)}")

    def list_cache_entries(self, *, page_size: int | None = None) -> list[JSON]:
        """The tenant's teacher-cache entries (key, size, hits, last use), newest first."""
        return list(self._paginate("/v1/cache", {}, page_size))

    def delete_cache_entry(self, id_: str) -> None:
        """Delete a teacher-cache entry; the next job that needs it rebuilds it."""
        self._send("DELETE", f"/v1/cache/{_seg(id_)}")

    # -- webhooks -----------------------------------------------------------------------------

    def add_webhook(self, url: str, *, description: str | None = None) -> JSON:
        """Register an endpoint for the tenant's final job states. The answer's ``secret``
        (``whsec_...``) is shown only here: keep it to verify deliveries."""
        body = {"url": url} | ({"description": description} if description else {})
        return self._json("POST", "/v1/webhooks", json=body)

    def list_webhooks(self, *, page_size: int | None = None) -> list[JSON]:
        """The tenant's webhook endpoints (without secrets), newest first."""
        return list(self._paginate("/v1/webhooks", {}, page_size))

    def get_webhook(self, id_: str) -> JSON:
        return self._json("GET", f"/v1/webhooks/{_seg(id_)}", retry=True)

    def delete_webhook(self, id_: str) -> None:
        """Delete an endpoint and its delivery records; nothing more is sent to it."""
        self._send("DELETE", f"/v1/webhooks/{_seg(id_)}")

    def list_webhook_deliveries(self, id_: str, *, page_size: int | None = None) -> list[JSON]:
        """The endpoint's deliveries, newest first, each with every attempt."""
        return list(self._paginate(f"/v1/webhooks/{_seg(id_)}/deliveries", {}, page_size))

    # -- waiting -----------------------------------------------------------------------------

    def wait_for(
        self,
        kind: str,
        id_: str,
        statuses: Collection[str] | None = None,
        *,
        timeout: float = 600.0,
        interval: float = 1.0,
    ) -> JSON:
        """Poll a teacher, dataset or job until its ``status`` is one of ``statuses``
        (default: ready/invalid, or a job's final states); :class:`TimeoutError` after
        ``timeout`` seconds."""
        key = _kind(kind)
        wanted = set(statuses or (FINAL_JOB_STATES if key == "jobs" else READY_STATES))
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get_resource(key, id_)
            if obj["status"] in wanted:
                return obj
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{key[:-1]} {id_} is still {obj['status']} after {timeout:g} s "
                    f"(waiting for {', '.join(sorted(wanted))})"
                )
            self._sleep(interval)

    # -- plumbing ----------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(method, path, **kw).json()

    def _send(
        self,
        method: str,
        path: str,
        *,
        retry: bool = False,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        url = self._url(path)
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        for attempt in self._attempts(retry=retry):
            try:
                resp = self._http.request(
                    method,
                    url,
                    params=clean,
                    headers={**self._auth(), **(headers or {})},
                    follow_redirects=False,
                    **kw,
                )
            except _RETRY_ERRORS as exc:
                attempt.wait(None, exc)
                continue
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
            if resp.status_code in _RETRY_STATUSES and not attempt.last:
                attempt.wait(_retry_after(resp))
                continue
            if resp.is_error:
                raise _problem(resp)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover - _attempts raises first

    def _download(self, path: str, target: Path, sha256: str | None) -> Path:
        """Stream ``path`` to ``target``, following one redirect (see
        :meth:`download_artifact`)."""
        url = self._url(path)
        for attempt in self._attempts(retry=True):
            try:
                with self._http.stream(
                    "GET", url, headers=self._auth(), follow_redirects=False
                ) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        self._save_redirect(resp, target, sha256)
                    else:
                        self._save(resp, target, sha256)
                return target
            except _Retry as again:
                if attempt.last:
                    raise again.error from None
                attempt.wait(again.after)
            except _RETRY_ERRORS as exc:
                attempt.wait(None, exc)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover - _attempts raises first

    def _upload(self, kind: UploadKind, file: Path, params: dict[str, Any]) -> JSON:
        size = file.stat().st_size  # FileNotFoundError before anything is sent

        def chunks() -> Iterator[bytes]:
            with file.open("rb") as f:
                while data := f.read(CHUNK):
                    yield data

        # A declared length lets the server (and proxies) refuse an oversized body at once;
        # the generator is consumed as it is sent, so an upload is never retried.
        return self._json(
            "POST",
            _root(kind),
            params=params,
            content=chunks(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )

    def _paginate(self, path: str, params: dict[str, Any], page_size: int | None) -> Iterator[JSON]:
        cursor: str | None = None
        while True:
            page = self._json(
                "GET", path, params={**params, "limit": page_size, "cursor": cursor}, retry=True
            )
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def _save_redirect(self, resp: httpx.Response, target: Path, sha256: str | None) -> None:
        location = resp.url.join(resp.headers["location"])
        # A presigned URL carries its own authorization: the API key must not leave the API.
        same_origin = (location.scheme, location.host, location.port) == (
            resp.url.scheme,
            resp.url.host,
            resp.url.port,
        )
        headers = self._auth() if same_origin else {}
        with self._http.stream("GET", location, headers=headers, follow_redirects=True) as final:
            self._save(final, target, sha256)

    def _save(self, resp: httpx.Response, target: Path, sha256: str | None) -> None:
        if resp.is_error:
            resp.read()
            if resp.status_code in _RETRY_STATUSES:
                raise _Retry(_retry_after(resp), _problem(resp))
            raise _problem(resp)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        try:
            with part.open("wb") as f:
                for chunk in resp.iter_bytes(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
            if sha256 and digest.hexdigest() != sha256:
                raise KDServeClientError(
                    f"{target.name}: downloaded sha256 {digest.hexdigest()} does not match the "
                    f"server's {sha256}"
                )
            part.replace(target)
        finally:
            part.unlink(missing_ok=True)

    def _attempts(self, *, retry: bool) -> Iterator[_Attempt]:
        total = 1 + (self.retries if retry else 0)
        for n in range(total):
            yield _Attempt(self, n, last=n == total - 1)

    def _unreachable(self, exc: Exception) -> KDServeConnectionError:
        return KDServeConnectionError(
            f"cannot reach kdserve at {self.base_url}: {type(exc).__name__}: {exc or 'no reply'}"
        )


class _Attempt:
    def __init__(self, client: KDServeClient, n: int, *, last: bool) -> None:
        self.client, self.n, self.last = client, n, last

    def wait(self, after: float | None, exc: Exception | None = None) -> None:
        """Sleep before the next attempt, or give up if this was the last one."""
        if self.last:
            if exc is not None:
                raise self.client._unreachable(exc) from exc
            raise KDServeConnectionError(
                f"kdserve at {self.client.base_url} is still unavailable after "
                f"{self.n + 1} attempts"
            )
        backoff = min(0.5 * 2**self.n, 8.0)
        self.client._sleep(
            min(after if after is not None else backoff, self.client.max_retry_wait_s)
        )


class _Retry(Exception):
    def __init__(self, after: float | None, error: KDServeAPIError) -> None:
        self.after, self.error = after, error


def is_last_event(event: JSON) -> bool:
    """A job's last event: its report, or a final state without one (failed, canceled)."""
    return event.get("kind") == "report" or (
        event.get("kind") == "state" and event.get("status") in ("failed", "canceled")
    )


def parse_sse(lines: Iterable[str]) -> Iterator[JSON]:
    """The ``data`` of each server-sent event, parsed as JSON (the event as the JSON
    endpoint has it), as the HTML standard parses an event stream: ``data`` lines joined by
    newlines, dispatched at a blank line; comments (``:``), ``event``, ``id`` and ``retry``
    lines carry nothing the data does not."""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield json.loads("\n".join(data))
            data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value.removeprefix(" "))


def _retry_after(resp: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), or None when absent or unreadable."""
    value = resp.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _problem(resp: httpx.Response) -> KDServeAPIError:
    """The error of a non-2xx response, from its problem+json body when it has one."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("detail" in body or "code" in body):
        detail = body.get("detail")
        return KDServeAPIError(
            resp.status_code,
            str(body.get("code") or "http_error"),
            detail if isinstance(detail, str) else json.dumps(detail),
            title=body.get("title"),
            errors=body.get("errors"),
            retry_after=_retry_after(resp),
        )
    text = resp.text.strip()[:500]
    return KDServeAPIError(
        resp.status_code, "http_error", text or resp.reason_phrase, retry_after=_retry_after(resp)
    )


def _kind(kind: str) -> Kind:
    """``kind`` as a collection name: "teacher" and "teachers" are both "teachers"."""
    key = kind if kind.endswith("s") else f"{kind}s"
    for known in KINDS:
        if key == known:
            return known
    raise ValueError(f"kind must be teachers, datasets or jobs, not {kind!r}")


def _root(kind: str) -> str:
    return f"/v1/{_kind(kind)}"


def _seg(value: str) -> str:
    """One path segment, escaped (ids and artifact names never reach another path)."""
    return quote(str(value), safe="")
