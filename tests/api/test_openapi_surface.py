"""The API's surface is pinned: every path, method and documented status code.

``openapi_surface.json`` holds them as the API published them before the job contract
became kdcore's own types; a change to the surface must change that file on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

SURFACE = Path(__file__).with_name("openapi_surface.json")


def test_paths_methods_and_status_codes_are_unchanged(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    surface = {
        f"{method.upper()} {path}": sorted(operation.get("responses", {}))
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
    }
    assert surface == json.loads(SURFACE.read_text())
