"""Management API (SPEC §5, Micrio style): JSON POST bodies carrying organisationId and apiKey."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web

from imgproxy.images.negotiation import rendition_widths
from imgproxy.metadata.accounts import FOLDER_TYPES
from imgproxy.metadata.store import ImageRecord
from imgproxy.origins.sources import check_source_url
from imgproxy.state import STATE, AppState
from imgproxy.web.body import json_object, list_field, string_field
from imgproxy.web.errors import ApiError, json_response
from imgproxy.web.hooks import authorised

MAX_ADD = 1000
MAX_STATUS = 100
MAX_NAME = 512


async def _authorised(state: AppState, request: web.Request, body: dict[str, Any]) -> str:
    """Check organisationId + apiKey; the organisation's id, else 401."""
    org_id = string_field(body, "organisationId", max_length=64)
    api_key = body.get("apiKey")
    return await authorised(state, request, api_key if isinstance(api_key, str) else None, org_id)


async def _folder(state: AppState, org_id: str, body: dict[str, Any], name: str) -> str:
    folder_id = string_field(body, name, max_length=64)
    assert folder_id is not None
    if await state.accounts.get_folder(org_id, folder_id) is None:
        raise ApiError(404, f"folder {folder_id} not found")
    return folder_id


def _default_name(url: str) -> str:
    """The URL's last path segment, extension included (the bucket or host when there is none)."""
    parts = urlsplit(url)
    name = PurePosixPath(unquote(parts.path)).name
    return (name or parts.hostname or "image")[:MAX_NAME]


async def add(request: web.Request) -> web.Response:
    """POST /v2/images/add: queue up to 1,000 images by source URL; answers at once."""
    state = request.app[STATE]
    body = await json_object(request)
    org_id = await _authorised(state, request, body)
    images = list_field(body, "images", MAX_ADD)
    string_field(body, "userEmail", required=False, max_length=320)
    items: list[tuple[str, str]] = []
    for index, item in enumerate(images):
        where = f"images[{index}]."
        if not isinstance(item, dict):
            raise ApiError(400, f"images[{index}]: must be an object")
        url = string_field(item, "sourceUrl", where)
        assert url is not None
        problem = check_source_url(url)
        if problem:
            raise ApiError(400, f"{where}sourceUrl: {problem}")
        name = string_field(item, "name", where, required=False, max_length=MAX_NAME)
        items.append((name or _default_name(url), url))
    folder_id = await _folder(state, org_id, body, "folderId")
    await state.admission.admit(len(items))
    ids = await state.catalog.add_by_url(org_id, folder_id, items)
    state.workers.wake()
    result = [
        {"id": image_id, "name": name, "status": "queued"}
        for image_id, (name, _url) in zip(ids, items, strict=True)
    ]
    return json_response({"result": {"images": result}})


def _status_item(state: AppState, record: ImageRecord) -> dict[str, Any]:
    item: dict[str, Any] = {"id": record.id, "name": record.name, "status": record.status}
    if record.status == "error":
        item["error"] = record.error
    if record.width is not None:
        item["width"] = record.width
        item["height"] = record.height
    if record.status == "ready" and record.width is not None:
        smallest = rendition_widths(record.width, state.settings.processing.widths)[0]
        ext = "png" if record.has_alpha else "jpg"
        item["thumbnail"] = (
            f"{state.settings.public_base()}/images/{record.id}/v{record.version}/{smallest}.{ext}"
        )
    return item


async def image_status(request: web.Request) -> web.Response:
    """POST /v2/image/status: up to 100 of the organisation's images, in the order asked."""
    state = request.app[STATE]
    body = await json_object(request)
    org_id = await _authorised(state, request, body)
    ids = list_field(body, "imageIds", MAX_STATUS)
    for index, image_id in enumerate(ids):
        if not isinstance(image_id, str):
            raise ApiError(400, f"imageIds[{index}]: must be a string")
    records = await state.catalog.images_of(org_id, ids)
    return json_response({"result": {"images": [_status_item(state, r) for r in records]}})


async def folder_status(request: web.Request) -> web.Response:
    """POST /v2/folder/status: counts and the IDs still processing or in error."""
    state = request.app[STATE]
    body = await json_object(request)
    org_id = await _authorised(state, request, body)
    folder_id = await _folder(state, org_id, body, "folderId")
    stats = await state.catalog.folder_stats(org_id, folder_id)
    return json_response(
        {
            "result": {
                "numTotal": stats.total,
                "numComplete": stats.complete,
                "processingIds": stats.processing,
                "erroredIds": stats.errored,
            }
        }
    )


async def folder_create(request: web.Request) -> web.Response:
    """POST /v2/folder/create: a folder, album or space under a folder of the organisation."""
    state = request.app[STATE]
    body = await json_object(request)
    org_id = await _authorised(state, request, body)
    name = string_field(body, "name", required=False, max_length=MAX_NAME) or ""
    folder_type = string_field(body, "type", required=False, max_length=16)
    folder_type = "folder" if folder_type is None else folder_type
    if folder_type not in FOLDER_TYPES:
        raise ApiError(400, f"type: must be one of {', '.join(FOLDER_TYPES)}")
    parent_id = string_field(body, "parentId", max_length=64)
    assert parent_id is not None
    folder_id = await state.accounts.create_folder(org_id, parent_id, name, folder_type)
    if folder_id is None:
        raise ApiError(404, f"folder {parent_id} not found")
    return json_response({"result": {"id": folder_id}})
