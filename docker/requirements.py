"""Print the requirements that ``pyproject.toml`` declares, one a line, for ``pip install -r``.

The Dockerfile installs dependencies in a layer of their own, built from ``pyproject.toml``
alone, so that editing the code does not reinstall them; ``pyproject.toml`` stays the one place
where they are declared.

    python requirements.py pyproject.toml [--extras onnx,...] [--exclude torch,...]

``--extras`` adds optional-dependency groups (an unknown one is an error, where pip would only
warn). ``--exclude`` drops requirements by distribution name: the API image leaves torch out,
and the worker image installs a CUDA torch build before this list (its ``torch>=2.10`` line is
then already satisfied). Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def normalize(name: str) -> str:
    """PEP 503 form of a distribution name: ``Foo_Bar`` and ``foo-bar`` are the same."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_name(requirement: str) -> tuple[str, list[str]]:
    """The normalized distribution name and the extras of a PEP 508 requirement."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot read a distribution name from {requirement!r}")
    extras = [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]
    return normalize(match.group(1)), extras


def requirements(
    pyproject: Path, *, extras: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[str]:
    """Core dependencies plus ``extras``, without the names in ``exclude``.

    An extra that names the project itself (``kdserve[onnx]``) is expanded in place.
    """
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    own = normalize(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    dropped = {normalize(n) for n in exclude}

    out: list[str] = []
    seen_extras: set[str] = set()

    def add(reqs: list[str]) -> None:
        for req in reqs:
            name, req_extras = parse_name(req)
            if name == own:
                add_extras(req_extras)
            elif name not in dropped and req not in out:
                out.append(req)

    def add_extras(names: list[str]) -> None:
        for extra in names:
            if extra in seen_extras:
                continue
            if extra not in optional:
                valid = ", ".join(sorted(optional)) or "none"
                raise SystemExit(f"pyproject.toml has no extra {extra!r} (it has: {valid})")
            seen_extras.add(extra)
            add(optional[extra])

    add(list(project.get("dependencies", [])))
    add_extras(list(extras))
    return out


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extras", type=_csv, default=[], help="comma-separated extras")
    parser.add_argument("--exclude", type=_csv, default=[], help="comma-separated names")
    args = parser.parse_args(argv)
    for line in requirements(args.pyproject, extras=args.extras, exclude=args.exclude):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
