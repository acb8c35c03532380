"""docker-compose.yml, read as data and checked against the code it deploys.

No Docker engine here: these tests are how the file is verified. They interpolate variables the
way compose does, feed each service's environment to the real ``Settings``, and compare
commands, queues and time limits with what ``store`` expects.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from store.queue import make_celery
from store.settings import Settings
from tests.deploy.support import (
    MissingVariable,
    command,
    environment,
    interpolate,
    load_compose,
    references,
    required_variables,
    strings,
)

PREFIX = str(Settings.model_config.get("env_prefix", ""))
APP_SERVICES = ("api", "worker")  # the long-running kdserve processes that need everything
KDSERVE_SERVICES = ("migrate", "api", "worker", "worker-cpu", "beat")
SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "FLOWER_BASIC_AUTH")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH|ACCESS_KEY|PRIVATE_KEY")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def dummy_env(raw: dict[str, Any]) -> dict[str, str]:
    """A value for each required variable; optional ones keep the file's defaults."""
    return {name: f"dummy-{name.lower().replace('_', '-')}" for name in required_variables(raw)}


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], dummy_env: dict[str, str]) -> dict[str, Any]:
    resolved = interpolate(raw, dummy_env)
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def settings_for(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a process in ``service`` would build from its environment."""
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in environment(service).items():
        monkeypatch.setenv(key, value)
    return Settings()


# -- shape ----------------------------------------------------------------------------------


def test_every_service_the_app_needs_is_defined(services: dict[str, Any]) -> None:
    needed = {"postgres", "redis", "minio", "minio-init", "migrate", "api", "worker", "flower"}
    assert needed <= set(services), f"missing: {sorted(needed - set(services))}"


def test_secrets_are_required_without_defaults(raw: dict[str, Any]) -> None:
    assert set(SECRETS) <= required_variables(raw)
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate(raw, {n: "x" for n in SECRETS if n != "POSTGRES_PASSWORD"})


def test_no_hard_coded_secrets(
    raw: dict[str, Any], compose: dict[str, Any], dummy_env: dict[str, str]
) -> None:
    problems = []
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                refs = references(value)
                whole = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}", value)
                if not (whole and refs[0].op == ":?"):
                    problems.append(f"{name}: {key}={value!r} is not a ${{VAR:?…}} reference")
    # A secret variable is never given a default anywhere (${POSTGRES_PASSWORD:-postgres}).
    for text in strings(raw):
        for ref in references(text):
            if ref.name in SECRETS and ref.op != ":?":
                problems.append(f"{ref.name} used without :? in {text!r}")
    # Credentials inside URLs (scheme://user:password@host) come from required variables: once
    # interpolated with the test's dummy values, every such password is one of them.
    for text in strings(compose):
        for password in re.findall(r"://[^/@\s:]+:([^@\s/]+)@", text):
            if password not in dummy_env.values():
                problems.append(f"password {password!r} written into {text!r}")
    assert not problems, "\n".join(problems)


def test_backing_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "minio", "api"):
        check = services[name].get("healthcheck") or {}
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_redis_persists_the_queue(services: dict[str, Any]) -> None:
    argv = command(services["redis"])
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"].get("volumes", []))


def test_data_lives_in_named_volumes(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, target in (
        ("postgres", "/var/lib/postgresql/data"),
        ("redis", "/data"),
        ("minio", "/data"),
    ):
        mounts = [v.split(":") for v in services[name].get("volumes", [])]
        assert any(m[0] in named and m[1] == target for m in mounts), name


def test_api_health_check_asks_readiness_on_its_port(services: dict[str, Any]) -> None:
    probe = " ".join(services["api"]["healthcheck"]["test"])
    assert "/readyz" in probe
    assert ":8000/" in probe


def test_api_publishes_port_8000(services: dict[str, Any]) -> None:
    container_ports = [str(p).rsplit(":", 1)[-1] for p in services["api"]["ports"]]
    assert "8000" in container_ports


def test_app_services_wait_for_healthy_dependencies(services: dict[str, Any]) -> None:
    expected = {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
        "minio-init": "service_completed_successfully",
    }
    for name in ("api", "worker", "worker-cpu"):
        depends = services[name]["depends_on"]
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        got = {dep: spec.get("condition") for dep, spec in depends.items()}
        assert got == expected, name


def test_one_shots_wait_for_their_dependency(services: dict[str, Any]) -> None:
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("migrate", "minio-init"):
        assert services[name].get("restart", "no") == "no", f"{name} is a one-shot"


def test_every_dependency_is_a_defined_service(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert set(depends) <= set(services), name


def test_migrate_runs_the_alembic_upgrade(services: dict[str, Any]) -> None:
    assert command(services["migrate"]) == ["kdserve", "db", "upgrade"]
    assert services["migrate"]["build"]["target"] == "api"


def test_api_runs_kdserve_api_on_all_interfaces(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert command(services["api"]) == ["kdserve", "api"]
    settings = settings_for(services["api"], monkeypatch)
    assert settings.api_host == "0.0.0.0"
    assert settings.api_port == 8000


def test_minio_init_creates_the_storage_bucket_idempotently(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    init = services["minio-init"]
    script = " ".join(command(init))
    assert "mc mb --ignore-existing" in script
    # The bucket it creates is the one the app stores into.
    bucket = environment(init)["BUCKET"]
    storage = settings_for(services["api"], monkeypatch).storage_url
    assert storage is not None
    assert storage.startswith(f"s3://{bucket}/")


# -- settings --------------------------------------------------------------------------------


def test_every_kdserve_variable_is_a_setting(services: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    unknown = [
        f"{name}: {key}"
        for name, service in services.items()
        for key in environment(service)
        if key.startswith(PREFIX) and key[len(PREFIX) :].lower() not in fields
    ]
    assert not unknown, f"not fields of store.settings.Settings: {unknown}"


def test_host_variables_with_the_prefix_are_settings(raw: dict[str, Any]) -> None:
    # Compose's own knobs (image tag, ports, bucket) must not look like kdserve settings.
    fields = set(Settings.model_fields)
    names = {r.name for text in strings(raw) for r in references(text)}
    fake = sorted(
        n for n in names if n.startswith(PREFIX) and n[len(PREFIX) :].lower() not in fields
    )
    assert not fake, f"KDSERVE_-prefixed variables that are not settings: {fake}"


@pytest.mark.parametrize("name", KDSERVE_SERVICES)
def test_compose_environment_passes_the_production_validator(
    name: str, services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(services[name], monkeypatch)
    assert settings.environment == "production"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_production_essentials_are_set(
    name: str, services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(services[name], monkeypatch)
    assert settings.database_url is not None
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in settings.database_url
    assert settings.broker_url == "redis://redis:6379/0"
    assert settings.storage_url is not None
    assert settings.storage_url.startswith("s3://")
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.s3_access_key_id
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value()


def test_s3_credentials_are_the_minio_root_credentials(services: dict[str, Any]) -> None:
    minio, api = environment(services["minio"]), environment(services["api"])
    assert api["KDSERVE_S3_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert api["KDSERVE_S3_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_database_url_matches_the_postgres_service(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = environment(services["postgres"])
    url = settings_for(services["api"], monkeypatch).database_url
    user, password, db = pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
    assert url == f"postgresql+psycopg://{user}:{password}@postgres:5432/{db}"


def test_all_kdserve_processes_share_one_configuration(services: dict[str, Any]) -> None:
    def shared(name: str) -> dict[str, str]:
        env = environment(services[name])
        return {
            k: v
            for k, v in env.items()
            # API_ settings are the API's own; SANDBOX_ ones differ by worker kind (below).
            if k.startswith(PREFIX) and not k.startswith((f"{PREFIX}API_", f"{PREFIX}SANDBOX_"))
        }

    reference = shared("api")
    for name in KDSERVE_SERVICES:
        assert shared(name) == reference, name


def test_gpu_workers_cap_memory_by_container_not_by_rlimit(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # RLIMIT_AS breaks CUDA, which reserves far more address space than it uses.
    assert settings_for(services["worker"], monkeypatch).sandbox_memory_mb == 0
    assert services["worker"]["mem_limit"]
    assert settings_for(services["worker-cpu"], monkeypatch).sandbox_memory_mb > 0


def test_visibility_timeout_exceeds_the_job_time_limit(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("worker", "worker-cpu", "api"):
        env = environment(services[name])
        if f"{PREFIX}VISIBILITY_TIMEOUT_S" in env:
            settings = settings_for(services[name], monkeypatch)
            assert settings.visibility_timeout_s > settings.job_time_limit_s, name


# -- workers ---------------------------------------------------------------------------------


def _option(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
    return None


def _queues(service: dict[str, Any]) -> set[str]:
    value = _option(command(service), "--queues", "-Q")
    return set(value.split(",")) if value else set()


def test_gpu_worker_takes_one_job_at_a_time_in_a_fresh_child(services: dict[str, Any]) -> None:
    argv = command(services["worker"])
    assert argv[:2] == ["kdserve", "worker"]
    assert _option(argv, "--concurrency", "-c") == "1"
    assert _option(argv, "--max-tasks-per-child") == "1"


def test_gpu_worker_reserves_a_gpu(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices


@pytest.mark.parametrize("name", ["worker", "worker-cpu"])
def test_workers_run_under_an_init_that_reaps_sandbox_children(
    services: dict[str, Any], name: str
) -> None:
    # Each job runs in a sandbox child in its own session; when its pool process exits, the
    # child is handed to PID 1, which must reap it.
    assert services[name].get("init") is True


def test_gpu_worker_consumes_the_job_queue(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = settings_for(services["worker"], monkeypatch).queue
    assert queue in _queues(services["worker"])
    assert Settings.model_fields["queue"].default in _queues(services["worker"])


def test_some_worker_consumes_every_queue_the_app_routes_to(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(services["api"], monkeypatch)
    conf = make_celery(settings).conf
    routed = {conf.task_default_queue} | {r["queue"] for r in conf.task_routes.values()}
    consumed = set().union(
        *(_queues(s) for s in services.values() if command(s)[:2] == ["kdserve", "worker"])
    )
    assert routed <= consumed, f"no worker for {sorted(routed - consumed)}"


def _runs_beat(service: dict[str, Any]) -> bool:
    argv = command(service)
    return "beat" in argv or "--beat" in argv or "-B" in argv


def test_exactly_one_service_runs_the_beat_scheduler(services: dict[str, Any]) -> None:
    beats = [name for name, s in services.items() if _runs_beat(s)]
    assert beats == ["beat"], beats
    beat = services["beat"]
    assert "deploy" not in beat or beat["deploy"].get("replicas", 1) == 1
    assert "devices" not in str(beat.get("deploy", {})), "the scheduler needs no GPU"
    # Its schedule file must be writable by the image's non-root user (not /app).
    assert _option(command(beat), "--schedule", "-s", "--schedule-filename", "-S") == (
        "/var/lib/kdserve/celerybeat-schedule"
    )


def test_scalable_workers_do_not_run_beat(services: dict[str, Any]) -> None:
    for name in ("worker", "worker-cpu"):
        assert not _runs_beat(services[name]), name


def test_flower_watches_the_broker_behind_a_login(services: dict[str, Any]) -> None:
    flower = services["flower"]
    argv = command(flower)
    assert "flower" in argv
    assert "--broker=redis://redis:6379/0" in argv or "redis://redis:6379/0" in argv
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
    assert environment(flower).get("FLOWER_BASIC_AUTH")
    assert any(str(p).endswith(":5555") for p in flower["ports"])
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"]), "localhost only"


def test_built_services_use_dockerfile_targets(services: dict[str, Any]) -> None:
    from tests.deploy.support import parse_dockerfile

    targets = set(parse_dockerfile().stages)
    images: dict[str, str] = {}
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        assert build["target"] in targets, name
        # One image name per target, so services sharing a target share the image.
        assert images.setdefault(build["target"], service["image"]) == service["image"], name
    assert services["worker"]["build"]["target"] == "worker"
    assert services["api"]["build"]["target"] == "api"


# -- commands exist --------------------------------------------------------------------------


def _kdserve_commands(services: dict[str, Any]) -> list[tuple[str, list[str]]]:
    from tests.deploy.support import exec_form, parse_dockerfile

    found = [(name, command(s)) for name, s in services.items() if command(s)[:1] == ["kdserve"]]
    dockerfile = parse_dockerfile()
    for target in ("api", "worker"):
        cmd = exec_form(dockerfile.instructions(target, "CMD")[-1].args)
        found.append((f"Dockerfile {target}", cmd))
    return found


def test_kdserve_commands_and_options_exist(services: dict[str, Any]) -> None:
    import typer

    from cli.main import app

    for where, argv in _kdserve_commands(services):
        # click objects (typer may vendor its own click, so no isinstance checks)
        cmd: Any = typer.main.get_command(app)
        words = argv[1:]
        while hasattr(cmd, "commands") and words and not words[0].startswith("-"):
            sub = cmd.commands.get(words[0])
            assert sub is not None, f"{where}: `kdserve` has no command {words[0]!r}"
            cmd, words = sub, words[1:]
        assert not hasattr(cmd, "commands"), f"{where}: {argv} names a group, not a command"
        options = {opt for param in cmd.params for opt in (*param.opts, *param.secondary_opts)}
        used = {w.split("=", 1)[0] for w in words if w.startswith("-")}
        assert used <= options, f"{where}: unknown options {sorted(used - options)} in {argv}"


def test_celery_app_path_names_the_app(services: dict[str, Any]) -> None:
    import ast

    from tests.deploy.support import ROOT

    for name, service in services.items():
        argv = command(service)
        if argv[:1] != ["celery"] or "-A" not in argv:
            continue
        module, _, attribute = argv[argv.index("-A") + 1].partition(":")
        path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
        assert path.is_file(), f"{name}: no module {module}"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assigned = {
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        assert attribute in assigned, f"{name}: {module} defines no {attribute!r}"


# -- prometheus ------------------------------------------------------------------------------

PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"


def _prometheus_config(prometheus: dict[str, Any]) -> dict[str, Any]:
    """The repository file compose mounts as Prometheus's configuration, parsed."""
    import yaml

    from tests.deploy.support import ROOT

    mounts = [str(v).split(":") for v in prometheus.get("volumes", [])]
    sources = [m[0] for m in mounts if m[1] == PROMETHEUS_CONFIG]
    assert len(sources) == 1, f"mount one file at {PROMETHEUS_CONFIG}"
    assert [m for m in mounts if m[1] == PROMETHEUS_CONFIG][0][2:] == ["ro"], "mount it read-only"
    path = (ROOT / sources[0]).resolve()
    assert path.is_file(), f"{sources[0]} does not exist"
    assert path.is_relative_to(ROOT), "the configuration lives in the repository"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def test_prometheus_scrapes_the_api_service_on_the_port_it_listens_on(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.metrics.endpoints import router as metrics_router

    prometheus = services["prometheus"]
    image = prometheus["image"]
    assert image.startswith("prom/prometheus:v"), "a pinned release of the upstream image"
    assert f"--config.file={PROMETHEUS_CONFIG}" in command(prometheus)
    jobs = _prometheus_config(prometheus)["scrape_configs"]
    targets = [t for job in jobs for sc in job.get("static_configs", []) for t in sc["targets"]]
    api = settings_for(services["api"], monkeypatch)
    # The target is compose's `api` service by name, on the port `kdserve api` binds there
    # (the container's port, not the host's published one).
    assert targets == [f"api:{api.api_port}"]
    assert "api" in services
    assert api.api_host == "0.0.0.0"
    container_ports = [str(p).rsplit(":", 1)[-1] for p in services["api"]["ports"]]
    assert str(api.api_port) in container_ports
    (job,) = jobs
    assert job.get("metrics_path", "/metrics") in {
        getattr(r, "path", None) for r in metrics_router.routes
    }
    assert job.get("scheme", "http") == "http"


def test_prometheus_keeps_its_data_and_listens_on_this_host_only(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    prometheus = services["prometheus"]
    named = set(compose.get("volumes") or {})
    mounts = [str(v).split(":") for v in prometheus["volumes"]]
    assert any(m[0] in named and m[1] == "/prometheus" for m in mounts)
    assert "--storage.tsdb.path=/prometheus" in command(prometheus)
    assert all(str(p).startswith("127.0.0.1:") for p in prometheus["ports"]), "localhost only"
    assert any(str(p).endswith(":9090") for p in prometheus["ports"])
    assert prometheus["healthcheck"]["test"]
