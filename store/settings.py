"""Settings from the environment (prefix ``KDSERVE_``).

Defaults are the embedded single-machine mode: a SQLite database, a SQLite-backed Celery
broker and a local storage folder, all under ``KDSERVE_HOME`` (default ``./.kdserve``).
Production sets ``KDSERVE_DATABASE_URL``, ``KDSERVE_BROKER_URL``, ``KDSERVE_STORAGE_URL``
and the S3 variables; validators refuse unsafe combinations at start-up.
"""

from __future__ import annotations

from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kdcore.contract import CACHE_ENTRY_MAX_BYTES

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KDSERVE_", extra="ignore")

    environment: Literal["embedded", "development", "production"] = "embedded"
    home: Path = Path(".kdserve")

    # -- database ------------------------------------------------------------------------
    database_url: str | None = None  # default: sqlite under home
    database_pool_size: int = Field(default=10, ge=1)
    # How long the API trusts an API key it has checked (api.kit.keycache): a revoked key
    # is refused within this many seconds; 0 checks every request against the database.
    key_cache_ttl_s: float = Field(default=2.0, ge=0, le=60)

    # -- broker / queue ------------------------------------------------------------------
    broker_url: str | None = None  # default: kombu's SQLAlchemy transport on sqlite
    queue: str = "gpu"  # the queue distillation jobs are routed to
    job_time_limit_s: int = Field(default=24 * 3600, gt=0)
    # Redis redelivers unacked messages after this; keep it above the job time limit.
    visibility_timeout_s: int = Field(default=25 * 3600, gt=0)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    heartbeat_timeout_s: float = Field(default=60.0, gt=0)
    reap_interval_s: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    # A queued job, or an upload still validating, untouched this long gets its message sent
    # again (one lost with a broker restart): long enough that a job waiting its turn behind
    # others is rarely sent twice (a second message is harmless, only one attempt claims).
    resend_after_s: float = Field(default=600.0, gt=0)

    # -- storage -------------------------------------------------------------------------
    storage_url: str | None = None  # file:///abs/path or s3://bucket/prefix
    s3_endpoint_url: str | None = None
    # What clients use to reach storage, when it differs from the services' own endpoint
    # (e.g. http://minio:9000 inside compose, https://s3.example.com outside): presigned
    # download URLs are signed for this one.
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_presign_expiry_s: int = Field(default=3600, gt=0)

    # -- limits --------------------------------------------------------------------------
    max_upload_bytes: int = Field(default=2048 * MiB, gt=0)
    max_running_jobs_per_tenant: int = Field(default=4, ge=1)  # plain jobs, not sweep points
    # Queued and running points of all a tenant's sweeps together; one sweep's grid too.
    max_sweep_points_per_tenant: int = Field(default=64, ge=1)
    max_stored_bytes_per_tenant: int = Field(default=50 * 1024 * MiB, gt=0)
    # Request bodies other than uploads (JSON), refused with 413 past it.
    max_json_body_bytes: int = Field(default=1 * MiB, gt=0)
    # Uploads of one tenant streaming at once; teachers and datasets of one tenant waiting
    # for (or in) validation, uploads in progress included. Past either: 429.
    max_concurrent_uploads_per_tenant: int = Field(default=4, ge=1)
    max_validating_uploads_per_tenant: int = Field(default=16, ge=1)
    # A request body that sends nothing for this long is cut off (408), so a stalled client
    # holds its connection for a bounded time.
    request_body_idle_timeout_s: float = Field(default=60.0, gt=0)
    allow_code_checkpoints: bool = False

    # -- what one job may cost, checked at submission (kdcore.contract.cost) ---------------
    # Trainable parameters of the student, and of the teacher (as its validation counted).
    max_job_params: int = Field(default=1_000_000_000, gt=0)
    # Multiply-accumulates of one sample's forward pass, of the student and of the teacher.
    max_job_macs: int = Field(default=100_000_000_000, gt=0)
    # The student's activations for one training batch, as float32 (batch_size × the sum of
    # its layers' output sizes).
    max_job_activation_bytes: int = Field(default=64 * 1024 * MiB, gt=0)
    # Training samples × epochs, over every stage (and the baseline run).
    max_job_sample_epochs: int = Field(default=1_000_000_000, gt=0)
    # Whether the workers of `queue` have a CUDA device; false: jobs that ask for device
    # "cuda" are refused at submission instead of failing on a worker.
    cuda_workers: bool = True

    # -- the teacher cache (kdcore.cache; entries in storage, listed in cache_entries) -----
    teacher_cache: bool = True  # false: jobs run the teacher in the loop, as without a cache
    # Caps on the entries' bytes; an insert that goes over evicts least recently used entries.
    teacher_cache_max_bytes_per_tenant: int = Field(default=20 * 1024 * MiB, gt=0)
    teacher_cache_max_bytes: int = Field(default=200 * 1024 * MiB, gt=0)
    # FitNets hint maps are cached when their entry fits this: a job's memory budget
    # (kdcore.contract.CACHE_ENTRY_MAX_BYTES says why 2 GiB); 0: never cache hint maps.
    teacher_cache_max_entry_bytes: int = Field(default=CACHE_ENTRY_MAX_BYTES, ge=0)

    # -- the job sandbox (worker/sandbox) ----------------------------------------------------
    # "auto": bubblewrap namespaces where they work, else a plain child process (code
    # checkpoints refused); "bwrap": require them (jobs fail without); "process": never.
    sandbox: Literal["auto", "bwrap", "process"] = "auto"
    # Address-space cap of the child (RLIMIT_AS). 0 turns it off: needed on GPU workers,
    # where CUDA maps far more virtual memory than it uses (cap the container instead).
    sandbox_memory_mb: int = Field(default=16 * 1024, ge=0)
    sandbox_max_file_mb: int = Field(default=8 * 1024, ge=0)  # largest file it may write
    sandbox_threads: int = Field(default=0, ge=0)  # torch threads in the child; 0: default
    validation_time_limit_s: int = Field(default=900, gt=0)
    # Entries (files, folders, links: images or not) a dataset archive may hold; each costs a
    # header to read, so an archive of millions of empty members is refused at validation.
    dataset_max_members: int = Field(default=1_000_000, ge=1)

    # -- job events (GET /v1/jobs/{id}/events as server-sent events) ----------------------
    # Streams open at once in one API process: per tenant, and in all (past either: 429).
    # Each holds a connection and polls the database; none holds a session while waiting.
    max_event_streams_per_tenant: int = Field(default=8, ge=1)
    max_event_streams: int = Field(default=256, ge=1)
    event_poll_interval_s: float = Field(default=0.5, gt=0)  # how often a stream looks
    event_keepalive_s: float = Field(default=15.0, gt=0)  # a comment after this long idle
    # A stream ends after this long (the client resumes with Last-Event-ID), so a
    # connection is never held for a whole job and redeploys move streams along.
    event_stream_max_s: float = Field(default=3600.0, gt=0)

    # -- webhooks (docs/service.md#webhooks; worker/webhooks.py delivers) -------------------
    max_webhooks_per_tenant: int = Field(default=10, ge=1)
    # Networks a webhook may reach although they are not public (loopback, private,
    # link-local, ...): comma-separated CIDRs, e.g. "10.0.0.0/8,127.0.0.1/32". Empty (the
    # default) refuses every address that is not globally routable.
    webhook_allowed_networks: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )
    # One attempt, from resolving the host to the response's status line, all told.
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    webhook_max_attempts: int = Field(default=8, ge=1, le=20)
    # The wait before attempt n+1 is min(base * 4**(n-1), max), times a random factor in
    # [0.5, 1] (jitter, so that retries to one endpoint spread out).
    webhook_retry_base_s: float = Field(default=10.0, gt=0)
    webhook_retry_max_s: float = Field(default=6 * 3600.0, gt=0)
    # How often the dispatcher (Celery beat's "webhooks.dispatch") looks for work, and the
    # most attempts one round makes (all at once, each within webhook_timeout_s).
    webhook_dispatch_interval_s: float = Field(default=5.0, gt=0)
    webhook_batch_size: int = Field(default=32, ge=1, le=256)
    # A final state older than this when the dispatcher first sees it is not delivered: it
    # bounds what one round scans after the dispatcher was down.
    webhook_event_max_age_s: float = Field(default=3 * 24 * 3600.0, gt=0)

    # -- API -----------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000

    # -- GET /metrics (Prometheus) -------------------------------------------------------
    # Unset: /metrics answers anyone who reaches the port, as Prometheus scrapes usually
    # do. Set it where the API port is public: scrapes then send `Authorization: Bearer
    # <token>` (Prometheus: `authorization: {credentials_file: ...}`).
    metrics_token: SecretStr | None = None
    # How long a scrape waits on the database or the broker (connect, each query) before it
    # answers without their figures (kdserve_database_up / kdserve_broker_up 0).
    metrics_timeout_s: float = Field(default=2.0, gt=0, le=30)

    @cached_property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_home / 'kdserve.db'}"

    @property
    def broker(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.resolved_home / 'broker.db'}"

    @property
    def storage(self) -> str:
        return self.storage_url or (self.resolved_home / "storage").as_uri()

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return [ip_network(n.strip()) for n in value.split(",") if n.strip()]
        except ValueError as exc:
            raise ValueError(
                f"KDSERVE_WEBHOOK_ALLOWED_NETWORKS: {exc}; write comma-separated networks with "
                "their host bits zero, e.g. 10.0.0.0/8,127.0.0.1/32"
            ) from None

    @model_validator(mode="after")
    def _safe_for_production(self) -> Settings:
        if self.visibility_timeout_s <= self.job_time_limit_s:
            raise ValueError(
                "KDSERVE_VISIBILITY_TIMEOUT_S must exceed KDSERVE_JOB_TIME_LIMIT_S, or Redis "
                "redelivers a job that is still running"
            )
        if self.heartbeat_timeout_s <= 2 * self.heartbeat_interval_s:
            raise ValueError("KDSERVE_HEARTBEAT_TIMEOUT_S must be over twice the interval")
        if self.environment == "production":
            missing = [
                name
                for name, value in (
                    ("KDSERVE_DATABASE_URL", self.database_url),
                    ("KDSERVE_BROKER_URL", self.broker_url),
                    ("KDSERVE_STORAGE_URL", self.storage_url),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"production needs {', '.join(missing)}")
            if self.database_url and self.database_url.startswith("sqlite"):
                raise ValueError("production needs a server database, not SQLite")
            if self.storage_url and self.storage_url.startswith("s3://"):
                if not (self.s3_access_key_id and self.s3_secret_access_key):
                    raise ValueError(
                        "s3 storage needs KDSERVE_S3_ACCESS_KEY_ID and KDSERVE_S3_SECRET_ACCESS_KEY"
                    )
        return self


settings = Settings()
