"""docs/deploy.md keeps up with the settings and the compose file."""

from __future__ import annotations

import re

from store.settings import Settings
from tests.deploy.support import ROOT, load_compose, references, required_variables, strings

DOC = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
PREFIX = str(Settings.model_config.get("env_prefix", ""))


def _table_names() -> set[str]:
    """Names in the first column of the page's tables."""
    return set(re.findall(r"^\| `([A-Z0-9_]+)`", DOC, flags=re.MULTILINE))


def test_every_setting_is_in_the_settings_table() -> None:
    missing = [
        f"{PREFIX}{name.upper()}"
        for name in Settings.model_fields
        if f"{PREFIX}{name.upper()}" not in _table_names()
    ]
    assert not missing, f"docs/deploy.md does not list {missing}"


def test_no_setting_in_the_table_is_unknown() -> None:
    unknown = [
        n
        for n in _table_names()
        if n.startswith(PREFIX) and n[len(PREFIX) :].lower() not in Settings.model_fields
    ]
    assert not unknown, f"docs/deploy.md lists settings that do not exist: {unknown}"


def test_every_compose_variable_is_documented() -> None:
    raw = load_compose()
    names = {r.name for s in strings(raw) for r in references(s)}
    undocumented = sorted(n for n in names if f"`{n}`" not in DOC)
    assert not undocumented, f"docs/deploy.md does not mention {undocumented}"
    for name in required_variables(raw):
        assert re.search(rf"`{name}`[^\n]*\*\*required\*\*", DOC), f"{name} not marked required"


def test_every_service_is_described() -> None:
    services = load_compose()["services"]
    missing = [name for name in services if f"| `{name}` |" not in DOC]
    assert not missing, f"docs/deploy.md's service table lacks {missing}"


def test_every_test_named_in_the_promises_exists() -> None:
    """docs/promises.md pairs each promise with its test: a renamed test must not leave the
    page pointing at nothing."""
    page = (ROOT / "docs" / "promises.md").read_text(encoding="utf-8")
    named = re.findall(r"`([\w/]+\.py)(?:::(\w+))?`", page)
    assert len(named) > 30
    missing = []
    for path, test in named:
        source = ROOT / "tests" / path
        if not source.exists() and not (ROOT / path).exists():
            missing.append(path)
        elif test and f"def {test}(" not in source.read_text(encoding="utf-8"):
            missing.append(f"{path}::{test}")
    assert not missing, f"docs/promises.md names tests that do not exist: {missing}"
