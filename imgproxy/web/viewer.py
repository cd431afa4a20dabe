"""Viewer routes (SPEC §3): the best rendition now, info.json, events, placeholder, versioned files."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import orjson
from aiohttp import web

from imgproxy.cache.hot import HotFile
from imgproxy.images.ids import InvalidId, check_id
from imgproxy.images.negotiation import CONTENT_TYPES, choose_format, choose_width
from imgproxy.metadata.store import ImageRecord
from imgproxy.state import STATE, AppState
from imgproxy.web.errors import ApiError, image_error, json_response
from imgproxy.web.middlewares import cors_headers
from imgproxy.web.replay import ReplayableResponse

IMMUTABLE = "public, max-age=31536000, immutable"
SSE_HEARTBEAT = 15.0


def _state(request: web.Request) -> AppState:
    return request.app[STATE]


def _image_id(request: web.Request) -> str:
    try:
        return check_id(request.match_info["id"])
    except InvalidId as exc:
        raise ApiError(400, str(exc)) from exc


def _number(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, got {text[:40]!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}, got {text[:40]!r}")
    return value


def _not_found(image_id: str) -> ApiError:
    return ApiError(404, f"image {image_id} not found")


def _resolved(record: ImageRecord) -> bool:
    """True once we know the ID exists: an origin had it, or an API created it."""
    return record.origin is not None or record.created_by != "view" or not record.active


async def _view_resolved(state: AppState, image_id: str) -> ImageRecord:
    """Start the pull of a cold ID and wait (bounded) until an origin is known to have it.

    A failed image is reported as it is: polling info.json must not hammer a failing origin.
    """
    record = await state.service.view(image_id, retry_failed=False)
    if record is None:
        raise _not_found(image_id)
    if not _resolved(record):
        waited = await state.service.wait_for(
            image_id, _resolved, state.settings.viewer.first_view_wait
        )
        if waited is None:
            raise _not_found(image_id)
        record = waited
    return record


def _file(path: Path, content_type: str, cache_control: str, **extra: str) -> web.FileResponse:
    headers = {"Content-Type": content_type, "Cache-Control": cache_control, **extra}
    return web.FileResponse(path, headers=headers)


async def image(request: web.Request) -> web.StreamResponse:
    """GET /images/{id}: the display rendition when built, else the placeholder (waiting for it)."""
    state = _state(request)
    image_id = _image_id(request)
    css_width = _number(request, "w", float(state.settings.viewer.default_width), 1, 100_000)
    dpr = _number(request, "dpr", 1.0, 1, 4)
    record = await state.service.view(image_id)
    if record is None:
        raise _not_found(image_id)
    if not record.display:
        waited = await state.service.wait_for(
            image_id, lambda r: r.placeholder or r.display, state.settings.viewer.first_view_wait
        )
        if waited is None:
            raise _not_found(image_id)
        record = waited
    if record.display:
        width = choose_width(state.service.widths(record), css_width, dpr)
        fmt = choose_format(
            request.headers.get("Accept"), state.service.formats(record), record.has_alpha
        )
        path = await state.renditions.ensure(record, record.version, width, fmt)
        return _file(
            path,
            CONTENT_TYPES[fmt],
            f"public, max-age={state.settings.viewer.max_age}",
            Vary="Accept",
            **{"X-Image-Stage": "display", "X-Image-Version": str(record.version)},
        )
    if record.status == "error":
        raise image_error(image_id, record.error, record.detail)
    if record.placeholder:
        return _file(
            state.layout.placeholder(image_id, record.version),
            "image/jpeg",
            "no-store",
            **{"X-Image-Stage": "placeholder"},
        )
    raise ApiError(
        503,
        f"image {image_id} is {record.status}; the placeholder is not ready yet",
        {"Retry-After": "1"},
    )


async def info(request: web.Request) -> web.Response:
    """GET /images/{id}/info.json."""
    state = _state(request)
    record = await _view_resolved(state, _image_id(request))
    return json_response(state.service.info(record), headers={"Cache-Control": "no-cache"})


async def placeholder(request: web.Request) -> web.StreamResponse:
    """GET /images/{id}/placeholder.jpg."""
    state = _state(request)
    image_id = _image_id(request)
    record = await state.service.view(image_id)
    if record is None:
        raise _not_found(image_id)
    if not record.placeholder:
        waited = await state.service.wait_for(
            image_id, lambda r: r.placeholder, state.settings.viewer.first_view_wait
        )
        if waited is None:
            raise _not_found(image_id)
        record = waited
    if not record.placeholder:
        if record.status == "error":
            raise image_error(image_id, record.error, record.detail)
        raise ApiError(503, f"the placeholder of {image_id} is not ready yet", {"Retry-After": "1"})
    return _file(
        state.layout.placeholder(image_id, record.version),
        "image/jpeg",
        f"public, max-age={state.settings.viewer.max_age}",
    )


async def events(request: web.Request) -> web.StreamResponse:
    """GET /images/{id}/events: one SSE message (the info.json object) per change, until ready/error."""
    state = _state(request)
    image_id = _image_id(request)
    record: ImageRecord | None = await _view_resolved(state, image_id)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **cors_headers(state.settings, request),
        }
    )
    await response.prepare(request)
    last: bytes | None = None
    async with state.service.subscribe(image_id) as queue:
        record = await state.service.get(image_id)
        while True:
            if record is None:
                data = {"id": image_id, "status": "error", "error": "originalNotFound"}
            else:
                data = state.service.info(record)
            payload = orjson.dumps(data)
            if payload != last:
                await response.write(b"data: " + payload + b"\n\n")
                last = payload
            if record is None or record.status in ("ready", "error"):
                break
            try:
                record = await asyncio.wait_for(queue.get(), SSE_HEARTBEAT)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                record = await state.store.get_image(image_id)
    await response.write_eof()
    return response


def _version(request: web.Request) -> int:
    try:
        return int(request.match_info["version"])
    except ValueError:
        raise ApiError(400, "version must be a whole number") from None


async def rendition(request: web.Request) -> web.StreamResponse:
    """GET /images/{id}/v{version}/{width}.{ext}: immutable; built on request when configured."""
    state = _state(request)
    image_id = _image_id(request)
    version = _version(request)
    ext = request.match_info["ext"]
    width = int(request.match_info["width"])
    if ext not in CONTENT_TYPES or ext == "jpeg":
        raise ApiError(404, f"unknown rendition format {ext!r}: use jpg, webp, avif or png")
    path = state.layout.rendition(image_id, version, width, ext)
    fast = _immutable(request, state, image_id, path, CONTENT_TYPES[ext])
    if fast is not None:
        return fast
    if not path.exists():
        record = await state.service.get_reviving(image_id)
        if record is None:
            raise _not_found(image_id)
        path = await state.renditions.ensure_versioned(record, version, width, ext)
    if not any(h in request.headers for h in ("Range", "If-Range", "If-Modified-Since")):
        # Read once into memory; FileResponse (sendfile) keeps what memory does not do.
        hot = await state.hot.load(image_id, path)
        if hot is not None:
            return _from_memory(request, image_id, hot, CONTENT_TYPES[ext])
    return _file(path, CONTENT_TYPES[ext], IMMUTABLE)


async def dzi(request: web.Request) -> web.StreamResponse:
    """GET /images/{id}/v{version}/zoom.dzi."""
    state = _state(request)
    image_id = _image_id(request)
    version = _version(request)
    path = state.layout.dzi(image_id, version)
    fast = _immutable(request, state, image_id, path, "application/xml")
    if fast is not None:
        return fast
    await _zoom_missing(state, image_id, version)
    return _file(path, "application/xml", IMMUTABLE)


async def tile(request: web.Request) -> web.StreamResponse:
    """GET /images/{id}/v{version}/zoom_files/{level}/{col}_{row}.{ext}."""
    state = _state(request)
    image_id = _image_id(request)
    version = _version(request)
    tile_format = state.settings.processing.tile_format
    if request.match_info["ext"] != tile_format:
        raise ApiError(404, f"tiles are {tile_format}")
    level, col, row = (int(request.match_info[k]) for k in ("level", "col", "row"))
    path = state.layout.tile(image_id, version, level, col, row, tile_format)
    fast = _immutable(request, state, image_id, path, CONTENT_TYPES[tile_format])
    if fast is not None:
        return fast
    if not path.exists():
        await _zoom_missing(state, image_id, version)
        raise ApiError(404, f"no tile {level}/{col}_{row} in image {image_id}")
    return _file(path, CONTENT_TYPES[tile_format], IMMUTABLE)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match: `*`, or a list of (possibly weak) entity tags."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _immutable(
    request: web.Request, state: AppState, image_id: str, path: Path, content_type: str
) -> web.Response | None:
    """A small immutable file from memory (or read now), with no thread hop; None otherwise."""
    hot = state.hot.get(image_id, path)
    if hot is None:
        return None
    return _from_memory(request, image_id, hot, content_type)


def _from_memory(
    request: web.Request, image_id: str, hot: HotFile, content_type: str
) -> web.Response:
    headers = {"Cache-Control": IMMUTABLE, "ETag": hot.etag}
    if _matches(request.headers.get("If-None-Match"), hot.etag):
        return web.Response(status=304, headers=headers)
    # The same bytes answer every plain request for this path: web/replay.py may record them.
    return ReplayableResponse(image_id, body=hot.body, content_type=content_type, headers=headers)


async def _zoom_missing(state: AppState, image_id: str, version: int) -> None:
    """Raise the right error for a zoom file that is not on disk (unless the pyramid is built)."""
    record = await state.service.get_reviving(image_id)
    if record is None:
        raise _not_found(image_id)
    current = await state.store.get_version(image_id, version)
    if current is None:
        raise ApiError(404, f"image {image_id} has no version {version}")
    if record.status == "error" and not current.zoom:
        raise image_error(image_id, record.error, record.detail)
    if not current.zoom:
        raise ApiError(503, f"the zoom stage of {image_id} is not built yet", {"Retry-After": "5"})
