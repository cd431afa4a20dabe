"""The URL table, and the small operational routes (health, metrics, demo, static)."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from imgproxy.metadata.store import StoreError
from imgproxy.state import STATE
from imgproxy.web import hooks, management, viewer
from imgproxy.web.errors import json_response
from imgproxy.web.middlewares import cors_headers
from imgproxy.web.store_api import setup_store_routes

ID = "{id}"
VERSION = "v{version:\\d{1,9}}"


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(f"/images/{ID}", viewer.image, name="image")
    r.add_get(f"/images/{ID}/info.json", viewer.info, name="info")
    r.add_get(f"/images/{ID}/events", viewer.events, name="events")
    r.add_get(f"/images/{ID}/placeholder.jpg", viewer.placeholder, name="placeholder")
    r.add_get(f"/images/{ID}/{VERSION}/zoom.dzi", viewer.dzi, name="dzi")
    r.add_get(
        f"/images/{ID}/{VERSION}/zoom_files/{{level:\\d+}}/{{col:\\d+}}_{{row:\\d+}}.{{ext:[a-z]+}}",
        viewer.tile,
        name="tile",
    )
    r.add_get(
        f"/images/{ID}/{VERSION}/{{width:\\d{{1,5}}}}.{{ext:[a-z]+}}",
        viewer.rendition,
        name="rendition",
    )
    # Preflights on the viewer routes themselves: a catch-all would turn unknown paths into 405s.
    for name in ("image", "info", "events", "placeholder", "dzi", "tile", "rendition"):
        resource = r[name]
        assert isinstance(resource, web.Resource)
        resource.add_route("OPTIONS", preflight)
    r.add_route("OPTIONS", "/smart-frame.js", preflight)
    r.add_get("/smart-frame.js", smart_frame, name="smart-frame")
    r.add_get("/demo", demo, name="demo")
    r.add_get("/", index, name="index")
    # No HEAD twins: a HEAD must not create or update anything.
    r.add_get("/v1/eis/create/{id}", hooks.create, name="hook-create", allow_head=False)
    r.add_get("/v1/eis/update/{id}", hooks.update, name="hook-update", allow_head=False)
    r.add_post("/v2/images/add", management.add, name="images-add")
    r.add_post("/v2/image/status", management.image_status, name="image-status")
    r.add_post("/v2/folder/status", management.folder_status, name="folder-status")
    r.add_post("/v2/folder/create", management.folder_create, name="folder-create")
    setup_store_routes(app)
    r.add_get("/healthz", healthz, name="healthz")
    r.add_get("/metrics", metrics, name="metrics")
    r.add_get("/openapi.json", openapi, name="openapi")


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight for the viewer routes (they only ever take GET)."""
    headers = {
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": request.headers.get(
            "Access-Control-Request-Headers", "Accept"
        ),
        "Access-Control-Max-Age": "86400",
        **cors_headers(request.app[STATE].settings, request),
    }
    return web.Response(status=204, headers=headers)


def _static(name: str) -> bytes:
    return resources.files("imgproxy.web").joinpath("static", name).read_bytes()


async def smart_frame(request: web.Request) -> web.Response:
    return web.Response(
        body=_static("smart-frame.js"),
        content_type="text/javascript",
        headers={"Cache-Control": "public, max-age=300"},
    )


async def demo(request: web.Request) -> web.Response:
    return web.Response(body=_static("demo.html"), content_type="text/html")


async def openapi(request: web.Request) -> web.Response:
    """The hand-maintained OpenAPI 3.1 document of every route (tests/test_openapi.py checks it)."""
    return web.Response(body=_static("openapi.json"), content_type="application/json")


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/demo")


async def healthz(request: web.Request) -> web.Response:
    """200 with queue and cache figures; 503 naming the dependency that failed."""
    state = request.app[STATE]
    try:
        await state.store.ping()
        queue = await state.store.queue_depth()
    except StoreError as exc:
        failed = f"metadata store: {exc}"
        return json_response({"status": "error", "error": failed, "failed": failed}, status=503)
    return json_response(
        {
            "status": "ok",
            "queue": queue,
            "workers_busy": state.workers.busy,
            "cache_bytes": state.budget.total,
        },
        headers={"Cache-Control": "no-store"},
    )


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    extra = {
        "imgproxy_workers_busy": float(state.workers.busy),
        "imgproxy_cache_bytes": float(state.budget.total),
    }
    try:
        extra["imgproxy_queue_depth"] = float(await state.store.queue_depth())
    except StoreError:
        pass
    return web.Response(
        text=state.metrics.render(extra),
        content_type="text/plain",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )
