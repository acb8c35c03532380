"""Readers for the deployment files, so tests can check them without a Docker engine.

``interpolate`` follows the Compose specification's variable syntax; ``parse_dockerfile``
understands the subset of Dockerfile syntax this repository uses (line continuations,
comments, ``FROM … AS``, ``ARG`` defaults, exec-form ``CMD``).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt},
# ${NAME+alt}, $NAME, and $$ (a literal $).
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(LookupError):
    """A ``${NAME:?message}`` variable is unset (compose refuses to start)."""


@dataclass(frozen=True)
class Reference:
    name: str
    op: str | None  # None for ${NAME} / $NAME
    arg: str


def references(value: str) -> list[Reference]:
    """Every variable reference in ``value`` (``$$`` escapes excluded)."""
    found = []
    for m in _VARIABLE.finditer(value):
        if m.group("escaped"):
            continue
        name = m.group("braced") or m.group("named")
        found.append(Reference(name, m.group("op"), m.group("arg") or ""))
    return found


def interpolate_str(value: str, env: Mapping[str, str]) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("named")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset_or_empty = not current
        if op in (":?", "?") and (current is None or (op == ":?" and unset_or_empty)):
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and (current is None or (op == ":-" and unset_or_empty)):
            return arg
        if op in (":+", "+"):
            return arg if (current is not None and (op == "+" or not unset_or_empty)) else ""
        return current or ""

    return _VARIABLE.sub(replace, value)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value in a parsed compose document, as compose does."""
    if isinstance(node, str):
        return interpolate_str(node, env)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def strings(node: Any) -> list[str]:
    """Every string value in a parsed document."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    return []


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def required_variables(doc: Any) -> set[str]:
    """Variables the file requires (``${NAME:?…}`` / ``${NAME?…}``)."""
    return {r.name for s in strings(doc) for r in references(s) if r.op in (":?", "?")}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a mapping, whichever form the file uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return dict(pairs)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command(service: Mapping[str, Any]) -> list[str]:
    """A service's ``command`` as an argument list."""
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


# -- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str  # image or an earlier stage's name, ARGs resolved
    instructions: list[Instruction] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults declared in the stage


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, target: str) -> list[Stage]:
        """``target`` and the stages it is built FROM, base first."""
        stages = [self.stages[target]]
        while stages[0].base in self.stages:
            stages.insert(0, self.stages[stages[0].base])
        return stages

    def instructions(self, target: str, keyword: str | None = None) -> list[Instruction]:
        return [
            i
            for stage in self.chain(target)
            for i in stage.instructions
            if keyword is None or i.keyword == keyword
        ]

    def resolve(self, target: str, text: str) -> str:
        """Substitute ARG defaults (global, then the chain's stages) into ``text``."""
        values = dict(self.global_args)
        for stage in self.chain(target):
            values.update(stage.args)

        def sub(m: re.Match[str]) -> str:
            name = m.group("braced") or m.group("named")
            return values.get(name, m.group(0)) if name else m.group(0)

        return _VARIABLE.sub(sub, text)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continuation
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        lines.append((start, " ".join(b for b in buf if b)))
        buf = []
    if buf:
        lines.append((start, " ".join(buf)))
    return lines


def _arg_default(args: str) -> tuple[str, str]:
    name, _, default = args.partition("=")
    return name.strip(), default.strip().strip('"')


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for number, line in _logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            parts = args.split()
            parts = [p for p in parts if not p.startswith("--")]
            base = _VARIABLE.sub(
                lambda m: global_args.get(m.group("braced") or m.group("named") or "", ""),
                parts[0],
            )
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            current = Stage(name=name, base=base)
            stages[name] = current
        elif current is None:
            if keyword == "ARG":
                k, v = _arg_default(args)
                global_args[k] = v
        else:
            if keyword == "ARG":
                k, v = _arg_default(args)
                current.args[k] = v
            current.instructions.append(Instruction(keyword, args, number))
    return Dockerfile(global_args, stages)


def exec_form(args: str) -> list[str]:
    """The argument list of an exec-form (JSON) CMD/ENTRYPOINT; shell form gets ``sh -c``."""
    if args.startswith("["):
        parsed = json.loads(args)
        assert isinstance(parsed, list)
        return [str(a) for a in parsed]
    return ["/bin/sh", "-c", args]


def copy_sources(instruction: Instruction) -> list[str]:
    """Source paths of a COPY/ADD from the build context (none for ``--from=``)."""
    words = shlex.split(instruction.args)
    if any(w.startswith("--from") for w in words):
        return []
    words = [w for w in words if not w.startswith("--")]
    return words[:-1]
