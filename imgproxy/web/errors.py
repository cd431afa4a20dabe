"""Errors as JSON: every failure a client sees is `{"error": "..."}` with a fitting status."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_response(
    data: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response({"error": message}, status=status, headers=headers)


# An image in error, seen by a viewer (SPEC §3).
ERROR_STATUS = {"invalidImage": 415, "originalNotFound": 404}


def image_error(image_id: str, code: str | None, detail: str | None) -> ApiError:
    status = ERROR_STATUS.get(code or "unknown", 502)
    message = f"image {image_id}: {code}"
    if detail:
        message += f" ({detail})"
    return ApiError(status, message)
