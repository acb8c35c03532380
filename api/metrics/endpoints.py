from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from fastapi.security.utils import get_authorization_scheme_param
from prometheus_client import CONTENT_TYPE_LATEST

from api.kit.deps import ServicesDep
from api.kit.errors import Unauthorized
from api.metrics.scrape import render

router = APIRouter(tags=["metrics"])


# Left out of the OpenAPI document: it is for Prometheus, not for API clients, and its
# format is Prometheus's own (docs/service.md, "Metrics").
@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus metrics, in the text exposition format."""
    token = services.settings.metrics_token
    if token is not None:
        scheme, sent = get_authorization_scheme_param(request.headers.get("authorization"))
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent.encode(), expected):
            raise Unauthorized(
                "/metrics needs `Authorization: Bearer <KDSERVE_METRICS_TOKEN>`; give the "
                "scraper that token (Prometheus: authorization.credentials_file)",
                headers={"WWW-Authenticate": "Bearer"},
            )
    state = request.app.state
    return Response(
        render(state.request_metrics, getattr(state, "state_collector", None)),
        media_type=CONTENT_TYPE_LATEST,
    )
