"""Schemathesis's stateful phase against the real service: `kdserve api` (uvicorn) and a worker
on PostgreSQL, Redis and an S3 server, driven over HTTP by the `schemathesis` command.

The stateful phase chains calls by the links Schemathesis infers from the document (a POST's
returned `id` feeding the GET, cancel, delete and artifact operations that take it), so the
fuzzer works on rows it made itself. Besides the per-response checks of
``test_openapi.py`` it runs the stateful ones: what a POST created can be read back
(`ensure_resource_availability`), and what a DELETE removed is gone (`use_after_free`).
We run the command, not the Python state machine: its engine replays scenarios against a
server whose state moved on (an Idempotency-Key already used, a limit now reached), which the
bare Hypothesis state machine reports as a flaky strategy instead of testing on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, real_stack

REDIS_URL = "redis://127.0.0.1:6379/13"
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
# Scenarios: ~1 min on 2 cores (KDSERVE_FUZZ_STATEFUL_EXAMPLES=500 for a longer hunt).
EXAMPLES = os.environ.get("KDSERVE_FUZZ_STATEFUL_EXAMPLES", "40")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "ensure_resource_availability",
        "use_after_free",
    ]
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("stateful")
    with real_stack(home, redis_url=REDIS_URL, db_prefix="kdserve_stateful") as stack:
        yield stack


@pytest.mark.slow
def test_call_sequences_over_http_never_give_a_5xx_nor_break_the_document(
    stack: Stack, tmp_path: Path
) -> None:
    key = stack.run("keys", "create", "--tenant", "stateful-fuzzer")
    report = tmp_path / "events.ndjson"
    done = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{stack.url}/openapi.json",
            "--phases=stateful",
            f"--max-examples={EXAMPLES}",
            "--seed=0",
            f"--checks={CHECKS}",
            f"--header=Authorization: Bearer {key}",
            "--request-timeout=30",
            "--report=ndjson",
            f"--report-ndjson-path={report}",
            "--no-color",
            "--generation-database=none",  # nothing kept between runs: each run is its own
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,  # its crash cache (.schemathesis/) stays out of the repository
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-8000:]
    # The phase ran scenarios: an empty one (no links inferred) would also exit 0.
    events = [json.loads(line) for line in report.read_text().splitlines()]
    ran = [e["ScenarioFinished"] for e in events if "ScenarioFinished" in e]
    assert sum(s["status"] == "success" for s in ran) >= 10, out[-4000:]
