"""JSON request bodies parsed with kdcore's bounds: ``APIRouter(route_class=BoundedJsonRoute)``.

FastAPI parses a JSON body with ``json.loads``, which takes ``NaN`` and ``Infinity`` (then
stored as null, or reaching a float field) and nests as deep as the interpreter allows.
These routes parse it with :func:`kdcore.contract.load_json` instead: either is a 422 that
says what to change, through FastAPI's own ``json_invalid`` error.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from kdcore.contract import load_json


class BoundedJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = load_json(await self.body())
        return self._json


class BoundedJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(BoundedJsonRequest(request.scope, request.receive))

        return bounded
