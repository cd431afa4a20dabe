"""Reading JSON request bodies with errors that name the offending field."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from imgproxy.web.errors import ApiError


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, "request body too large") from exc
    if not raw:
        raise ApiError(400, "request body must be a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def string_field(
    body: dict[str, Any], name: str, where: str = "", required: bool = True, max_length: int = 2048
) -> str | None:
    """A string member (non-empty when required), else a 400 naming it."""
    label = f"{where}{name}"
    if name not in body or body[name] is None:
        if required:
            raise ApiError(400, f"{label}: required")
        return None
    value = body[name]
    if not isinstance(value, str):
        raise ApiError(400, f"{label}: must be a string")
    if required and not value:
        raise ApiError(400, f"{label}: must not be empty")
    if len(value) > max_length:
        raise ApiError(400, f"{label}: longer than {max_length} characters")
    return value


def list_field(body: dict[str, Any], name: str, most: int) -> list[Any]:
    """A list member of 1..`most` items, else a 400 naming it."""
    value = body.get(name)
    if not isinstance(value, list):
        raise ApiError(400, f"{name}: required list")
    if not value:
        raise ApiError(400, f"{name}: must not be empty")
    if len(value) > most:
        raise ApiError(400, f"{name}: at most {most} items, got {len(value)}")
    return value
