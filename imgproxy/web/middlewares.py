"""Middlewares: errors -> JSON, CORS on the viewer routes, request counting."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from imgproxy.jobs.admission import QueueFull
from imgproxy.metrics import Metrics
from imgproxy.settings import Settings
from imgproxy.web.errors import ApiError, error_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

VIEWER_PREFIXES = ("/images/", "/smart-frame.js")


def is_viewer_path(path: str) -> bool:
    return path.startswith(VIEWER_PREFIXES)


def cors_headers(settings: Settings, request: web.Request) -> dict[str, str]:
    """Access-Control-Allow-Origin for a viewer route: '*' or the request's origin when listed."""
    allowed = settings.server.cors_origins
    if "*" in allowed:
        return {"Access-Control-Allow-Origin": "*"}
    origin = request.headers.get("Origin")
    if origin and origin in allowed:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {"Vary": "Origin"} if allowed else {}


def make_middlewares(settings: Settings, metrics: Metrics) -> list[object]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.message, exc.headers)
        except QueueFull as exc:
            response = error_response(503, str(exc), {"Retry-After": "5"})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            reason = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else None
            headers = {
                k: v
                for k, v in exc.headers.items()
                if k.lower() not in ("content-type", "content-length")
            }
            response = error_response(exc.status, reason or exc.reason.lower(), headers)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = error_response(500, "internal error")
        if is_viewer_path(request.path) and not response.prepared:
            for name, value in cors_headers(settings, request).items():
                if name == "Vary" and "Vary" in response.headers:
                    if value not in response.headers["Vary"]:
                        response.headers["Vary"] += f", {value}"
                else:
                    response.headers[name] = value
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        metrics.inc("imgproxy_requests_total", route=name, status=str(response.status))
        return response

    return [errors]
