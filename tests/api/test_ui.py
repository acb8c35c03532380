"""The dashboard's files (api/ui): served at /ui without a key, with a strict
Content-Security-Policy, everything from this origin, the vendored uPlot as recorded."""

from __future__ import annotations

import hashlib
import json
import re

from fastapi.testclient import TestClient

from api.ui import STATIC

VENDOR = json.loads(STATIC.with_name("vendor.json").read_text())


def test_the_dashboard_is_served_without_a_key_with_security_headers(client: TestClient) -> None:
    moved = client.get("/ui", follow_redirects=False)
    assert moved.status_code in (307, 308)
    assert moved.headers["location"].endswith("/ui/")

    page = client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<script type="module" src="app.js">' in page.text

    script = client.get("/ui/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert client.get("/ui/vendor/uplot/uPlot.esm.js").status_code == 200
    assert client.get("/ui/no-such-file.js").status_code == 404
    # The gate still guards the API itself.
    assert client.get("/v1/jobs").status_code == 401


def test_the_dashboard_loads_nothing_from_another_origin() -> None:
    ours = [p for p in STATIC.rglob("*") if p.is_file() and "vendor" not in p.parts]
    assert {p.name for p in ours} >= {"index.html", "app.js", "api.js", "charts.js", "style.css"}
    for path in ours:
        text = path.read_text()
        assert not re.search(r"https?://", text), f"{path.name} names another origin"
        assert "innerHTML" not in text, f"{path.name}: write API values as text, not HTML"
        assert "localStorage" not in text, f"{path.name}: the key belongs in sessionStorage"


def test_the_vendored_charting_library_is_the_recorded_release() -> None:
    uplot = VENDOR["uplot"]
    assert uplot["license"] == "MIT"
    base = STATIC.parent
    for name, digest in uplot["files"].items():
        assert hashlib.sha256((base / name).read_bytes()).hexdigest() == digest, (
            f"{name} differs from uplot {uplot['version']}: restore it, or record the new "
            "release's files and digests in api/ui/vendor.json"
        )
    vendored = {p.relative_to(base).as_posix() for p in (STATIC / "vendor").rglob("*")}
    assert vendored - {"static/vendor/uplot"} == set(uplot["files"])
