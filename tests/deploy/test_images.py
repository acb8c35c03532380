"""What the images install covers what the code imports.

Without a Docker engine the images are never built here, so the failure a build would reveal
only at run time (``ModuleNotFoundError`` in a container) is checked statically: the third-party
modules imported by the code each image runs must come from distributions that image installs
(its requirement list from pyproject.toml, plus their dependencies, resolved against this
environment's installed metadata). The API image has no torch, so the API's modules are also
imported with torch blocked.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import textwrap
from functools import cache
from importlib import metadata
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement

from tests.deploy.support import COMPOSE_FILE, ROOT, environment, load_compose, parse_dockerfile
from tests.deploy.test_dockerfile import _requirements_calls

FIRST_PARTY = {"kdcore", "api", "worker", "cli", "client", "store", "migrations", "tests"}
# Drivers named by a URL in docker-compose.yml rather than imported by the code.
URL_DRIVERS = {"postgresql+psycopg": "psycopg", "redis": "redis", "s3": "boto3"}


@cache
def _requirements_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "kd_requirements", ROOT / "docker/requirements.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_requirements(target: str) -> list[str]:
    """The requirement lines the Dockerfile installs for ``target``, as pip would see them."""
    requirements = _requirements_module()
    dockerfile = parse_dockerfile()
    lines: list[str] = []
    for args in _requirements_calls(dockerfile, target):
        extras = args[args.index("--extras") + 1].split(",") if "--extras" in args else []
        exclude = args[args.index("--exclude") + 1].split(",") if "--exclude" in args else []
        lines += requirements.requirements(ROOT / "pyproject.toml", extras=extras, exclude=exclude)
    return lines


def _normalize(name: str) -> str:
    normalized: str = _requirements_module().normalize(name)
    return normalized


def closure(requirement_lines: list[str]) -> set[str]:
    """Distribution names installed by ``requirement_lines`` and their dependencies."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    stack = [Requirement(line) for line in requirement_lines]
    while stack:
        req = stack.pop()
        name = _normalize(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        try:
            dependencies = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # reported by the caller when a module maps to nothing installed
        for line in dependencies:
            dep = Requirement(line)
            if dep.marker is None or any(
                dep.marker.evaluate({"extra": extra}) for extra in (*req.extras, "")
            ):
                stack.append(dep)
    return names


@cache
def _module_distributions() -> dict[str, list[str]]:
    return {k: [_normalize(d) for d in v] for k, v in metadata.packages_distributions().items()}


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(path: Path, *, module_level_only: bool = False) -> set[str]:
    """Dotted names ``path`` imports (absolute imports only, TYPE_CHECKING blocks skipped)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _module_file(dotted: str) -> Path | None:
    parts = dotted.split(".")
    for candidate in (
        ROOT.joinpath(*parts).with_suffix(".py"),
        ROOT.joinpath(*parts, "__init__.py"),
    ):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(roots: list[str]) -> dict[str, Path]:
    """Top-level third-party modules imported from ``roots`` (files or folders), each with one
    file that imports it. Every import in the roots counts, even inside a function; first-party
    modules they import are followed to their module-level imports only (what importing them
    runs), so a torch import inside a kdcore function the API never calls does not count."""
    files = [
        p for r in roots for p in ([ROOT / r] if r.endswith(".py") else (ROOT / r).rglob("*.py"))
    ]
    found: dict[str, Path] = {}
    queue = [(f, False) for f in files]
    visited: set[tuple[Path, bool]] = set()
    while queue:
        file, module_level = queue.pop()
        if (file, module_level) in visited:
            continue
        visited.add((file, module_level))
        for name in imports(file, module_level_only=module_level):
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                target = _module_file(name)
                if target is not None:
                    queue.append((target, True))
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, file)
    return found


def url_drivers() -> dict[str, Path]:
    """Modules the compose configuration needs through its URLs (database, broker, storage)."""
    env = environment(load_compose()["services"]["api"])
    found: dict[str, Path] = {}
    for key in ("KDSERVE_DATABASE_URL", "KDSERVE_BROKER_URL", "KDSERVE_STORAGE_URL"):
        scheme = env[key].split("://", 1)[0]
        assert scheme in URL_DRIVERS, f"{key}: no known driver for {scheme}://"
        found[URL_DRIVERS[scheme]] = COMPOSE_FILE
    return found


def uncovered(modules: dict[str, Path], installed: set[str]) -> list[str]:
    missing = []
    for module, where in sorted(modules.items()):
        dists = _module_distributions().get(module)
        rel = where.relative_to(ROOT)
        if not dists:
            missing.append(f"{module} (needed by {rel}) is not installed in this environment")
        elif not set(dists) & installed:
            missing.append(f"{module} (needed by {rel}, distribution {dists[0]})")
    # psycopg needs libpq: the slim base image has none, so it must come as a wheel.
    if "psycopg" in modules and not {"psycopg-binary", "psycopg-c"} & installed:
        missing.append("psycopg's libpq: require psycopg[binary] (python:slim has no libpq)")
    return missing


def test_requirement_closure_follows_dependencies() -> None:
    # Sanity check of the resolver these tests rely on.
    assert {"pydantic-settings", "pydantic", "pydantic-core"} <= closure(["pydantic-settings"])


def test_worker_image_installs_what_the_worker_imports() -> None:
    installed = closure(image_requirements("worker"))
    assert "torch" in installed
    modules = third_party_imports(
        ["worker", "store", "kdcore", "cli", "client", "migrations/env.py"]
    )
    for module, source in url_drivers().items():
        modules.setdefault(module, source)
    missing = uncovered(modules, installed)
    assert not missing, (
        "the worker image would lack (declare them in pyproject.toml, in the core dependencies "
        "or an extra the Dockerfile's worker stage installs):\n  " + "\n  ".join(missing)
    )


def test_api_image_installs_what_the_api_imports() -> None:
    installed = closure(image_requirements("api"))
    assert "torch" not in installed, "something in the api image's requirements pulls in torch"
    modules = third_party_imports(["api", "store", "cli", "migrations/env.py"])
    modules.pop("torch", None)  # only in functions the API never calls: see the test below
    for module, source in url_drivers().items():
        modules.setdefault(module, source)
    missing = uncovered(modules, installed)
    assert not missing, (
        "the api image would lack (declare them in pyproject.toml, in the core dependencies "
        "or an extra the Dockerfile's api stage installs):\n  " + "\n  ".join(missing)
    )


def _api_modules() -> list[str]:
    """Every module of the API and the shared layer, and the CLI entry point."""
    names = ["cli.main"]
    for root in ("api", "store"):
        for path in sorted((ROOT / root).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


def test_api_modules_import_without_torch(tmp_path: Path) -> None:
    """The api image has no torch: importing the API, the CLI and the shared layer must not
    need it (kdcore's torch-free modules, such as the spec parser, are fine)."""
    script = textwrap.dedent(
        f"""
        import importlib, importlib.abc, json, sys, traceback

        class BlockTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("torch is not in the api image", name="torch")
                return None

        sys.meta_path.insert(0, BlockTorch())
        failures = {{}}
        for name in {_api_modules()!r}:
            try:
                importlib.import_module(name)
            except BaseException as exc:
                failures[name] = "".join(traceback.format_exception_only(exc)).strip()
        print(json.dumps(failures))
        """
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KDSERVE_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    failures: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    torch_needed = {k: v for k, v in failures.items() if "torch" in v}
    assert not torch_needed, f"these modules need torch, which the api image lacks: {torch_needed}"
    assert not failures, f"these modules fail to import: {failures}"
