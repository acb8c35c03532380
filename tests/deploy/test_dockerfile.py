"""The Dockerfile and .dockerignore, parsed and checked against the repository."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.deploy.support import (
    DOCKERIGNORE,
    ROOT,
    Dockerfile,
    Instruction,
    copy_sources,
    environment,
    exec_form,
    load_compose,
    parse_dockerfile,
)

TARGETS = ("api", "worker")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
CPU_INDEX = re.compile(r"download\.pytorch\.org/whl/cpu|\+cpu")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


def runs(dockerfile: Dockerfile, target: str) -> list[str]:
    """The RUN commands of ``target``'s own stage, ARG defaults substituted."""
    stage = dockerfile.stages[target]
    return [dockerfile.resolve(target, i.args) for i in stage.instructions if i.keyword == "RUN"]


def installs(command: str) -> bool:
    """Whether a RUN installs third-party packages (not the project itself, --no-deps)."""
    return "pip install" in command and "--no-deps" not in command


def last(dockerfile: Dockerfile, target: str, keyword: str) -> Instruction:
    found = dockerfile.instructions(target, keyword)
    assert found, f"{target}: no {keyword}"
    return found[-1]


def test_targets_exist(dockerfile: Dockerfile) -> None:
    assert set(TARGETS) <= set(dockerfile.stages)


def test_base_image_is_the_supported_python(dockerfile: Dockerfile) -> None:
    base = dockerfile.chain("api")[0].base
    assert base == dockerfile.chain("worker")[0].base
    match = re.match(r"python:(\d+\.\d+)", base)
    assert match, base
    assert match.group(1) in SpecifierSet(PYPROJECT["requires-python"])


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_a_non_root_user(dockerfile: Dockerfile, target: str) -> None:
    user = last(dockerfile, target, "USER").args.split(":")[0]
    assert user not in {"root", "0", ""}, f"{target} runs as {user!r}"
    # The user the image switches to is the one it creates.
    creates = " ".join(dockerfile.resolve(target, i.args) for i in dockerfile.instructions(target))
    assert re.search(rf"useradd\b.*--uid {user}\b", creates) or f"useradd {user}" in creates


@pytest.mark.parametrize("target", TARGETS)
def test_kdserve_home_is_the_users_writable_home(dockerfile: Dockerfile, target: str) -> None:
    env = " ".join(i.args for i in dockerfile.instructions(target, "ENV"))
    home = re.search(r"KDSERVE_HOME=(\S+)", env)
    assert home, "KDSERVE_HOME is not set in the image"
    creates = " ".join(i.args for i in dockerfile.instructions(target, "RUN"))
    assert f"--home-dir {home.group(1)} --create-home" in creates
    # Compose uses the same place (the beat schedule file lives there).
    for name, service in load_compose()["services"].items():
        value = environment(service).get("KDSERVE_HOME")
        assert value in (None, home.group(1)), name


def test_api_runs_kdserve_api(dockerfile: Dockerfile) -> None:
    cmd = exec_form(last(dockerfile, "api", "CMD").args)
    entry = dockerfile.instructions("api", "ENTRYPOINT")
    argv = (exec_form(entry[-1].args) if entry else []) + cmd
    assert argv == ["kdserve", "api"]
    assert "8000" in " ".join(i.args for i in dockerfile.instructions("api", "EXPOSE"))


def test_worker_runs_kdserve_worker_one_job_at_a_time(dockerfile: Dockerfile) -> None:
    argv = exec_form(last(dockerfile, "worker", "CMD").args)
    assert argv[:2] == ["kdserve", "worker"]
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert argv[argv.index("--max-tasks-per-child") + 1] == "1"


def test_worker_installs_a_cuda_torch_build(dockerfile: Dockerfile) -> None:
    commands = runs(dockerfile, "worker")
    torch_installs = [c for c in commands if installs(c) and re.search(r"\btorch==", c)]
    assert torch_installs, "the worker stage never installs a pinned torch"
    for command in torch_installs:
        assert not CPU_INDEX.search(command), f"CPU torch: {command}"
    # The build fails if a CPU wheel got in: every install step checks torch.version.cuda.
    for command in commands:
        if installs(command):
            assert "torch.version.cuda" in command, f"unchecked install: {command}"
    version = re.search(r"torch==(\S+?)[\"'\s]", torch_installs[0] + " ")
    assert version
    torch_spec = next(
        Requirement(r).specifier for r in PYPROJECT["dependencies"] if r.startswith("torch")
    )
    assert version.group(1) in torch_spec, "the pinned torch must satisfy pyproject.toml"


def test_api_image_leaves_torch_out(dockerfile: Dockerfile) -> None:
    commands = [dockerfile.resolve("api", i.args) for i in dockerfile.instructions("api", "RUN")]
    assert not [
        c
        for c in commands
        if installs(c) and re.search(r"\btorch\b(?!\.)", c) and "--exclude torch" not in c
    ], "the api image installs torch"
    assert any("requirements.py" in c and "--exclude torch" in c for c in commands)
    # ... and checks, after every install, that nothing pulled torch in.
    final = [c for c in commands if "pip install" in c][-1]
    assert "find_spec('torch')" in final


def _requirements_calls(dockerfile: Dockerfile, target: str) -> list[list[str]]:
    calls = []
    for command in runs(dockerfile, target):
        words = shlex.split(command)
        for i, word in enumerate(words):
            if word.endswith("requirements.py"):
                calls.append(words[i + 1 : words.index(">", i) if ">" in words[i:] else None])
    return calls


@pytest.mark.parametrize("target", TARGETS)
def test_dependency_extras_exist_in_pyproject(dockerfile: Dockerfile, target: str) -> None:
    calls = _requirements_calls(dockerfile, target)
    assert calls, f"{target} does not install the dependencies from pyproject.toml"
    optional = PYPROJECT.get("optional-dependencies", {})
    for args in calls:
        if "--extras" in args:
            extras = args[args.index("--extras") + 1].split(",")
            assert set(extras) <= set(optional), f"unknown extras {extras}"


def test_worker_has_the_onnx_extra(dockerfile: Dockerfile) -> None:
    calls = _requirements_calls(dockerfile, "worker")
    extras = {
        e
        for args in calls
        if "--extras" in args
        for e in args[args.index("--extras") + 1].split(",")
    }
    assert "onnx" in extras


@pytest.mark.parametrize("target", TARGETS)
def test_copy_sources_exist(dockerfile: Dockerfile, target: str) -> None:
    for instruction in dockerfile.instructions(target):
        if instruction.keyword in ("COPY", "ADD"):
            for source in copy_sources(instruction):
                assert (ROOT / source).exists(), f"line {instruction.line}: {source} is missing"


@pytest.mark.parametrize("target", TARGETS)
def test_the_service_code_is_copied(dockerfile: Dockerfile, target: str) -> None:
    copied = {
        s.rstrip("/") for i in dockerfile.instructions(target, "COPY") for s in copy_sources(i)
    }
    needed = {
        "pyproject.toml",
        "README.md",
        "alembic.ini",
        "kdcore",
        "store",
        "api",
        "worker",
        "cli",
        "migrations",
    }
    assert needed <= copied, f"{target} lacks {sorted(needed - copied)}"
    # Every first-party package pyproject.toml installs is in the image.
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in include["packages"]["find"]["include"]}
    assert packages <= copied


def test_source_tree_is_importable_where_alembic_ini_expects_it(dockerfile: Dockerfile) -> None:
    workdir = last(dockerfile, "api", "WORKDIR").args
    env = " ".join(i.args for i in dockerfile.instructions("api", "ENV"))
    assert f"PYTHONPATH={workdir}" in env, "store/ and migrations/ import from the source tree"
    for instruction in dockerfile.instructions("api", "COPY"):
        sources = copy_sources(instruction)
        if "alembic.ini" in sources:
            assert shlex.split(instruction.args)[-1] in ("./", ".", f"{workdir}/")


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex, i = regex + line[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def ignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent excludes it."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, pattern in _ignore_patterns():
        if any(pattern.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    for path in (
        ".venv",
        ".git",
        "runs",
        "demo-out",
        ".env",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "kdserve.egg-info",
        "tests/data",
        "api/__pycache__/x.pyc",
        "runs/teacher/student.safetensors",
        ".kdserve/kdserve.db",
    ):
        assert ignored(path), f"{path} would be sent to the Docker daemon"


@pytest.mark.parametrize("target", TARGETS)
def test_dockerignore_keeps_what_the_images_copy(dockerfile: Dockerfile, target: str) -> None:
    for instruction in dockerfile.instructions(target):
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        for source in copy_sources(instruction):
            path = ROOT / source
            files = (
                [path]
                if path.is_file()
                else sorted(path.rglob("*.py")) + sorted(path.rglob("*.mako"))
            )
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                assert not ignored(rel), f".dockerignore drops {rel}, which the image copies"


def test_alembic_ini_points_at_migrations() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "alembic.ini", encoding="utf-8")
    location = parser["alembic"]["script_location"].replace("%(here)s", str(ROOT))
    path = Path(location) if Path(location).is_absolute() else ROOT / location
    assert path.resolve() == (ROOT / "migrations").resolve()
    assert (path / "env.py").is_file()
    assert any((path / "versions").glob("*.py")), "no migration scripts"
