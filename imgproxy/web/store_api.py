"""Store image API (SPEC §6, Spiffy Stores style): owners and their ordered images, `x-api-key`.

An image's bytes are taken at creation (from `src` through the safe fetcher, or from a
base64 `attachment`), judged by content (png, gif, jpg only), kept under
`storage.dir/uploads/`, and served by the proxy under a generated ID like any other image.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web

from imgproxy.cache.disk import atomic_path, remove
from imgproxy.metadata.accounts import short_id
from imgproxy.metadata.shop import OWNER_KINDS, HandleTaken, Owner, OwnerGone, StoreImage
from imgproxy.origins.base import NotFound, TooLarge, Unavailable
from imgproxy.origins.registry import pull_url
from imgproxy.processing import pipeline
from imgproxy.state import STATE, AppState
from imgproxy.web.body import json_object
from imgproxy.web.errors import ApiError, json_response
from imgproxy.web.hooks import organisation

# owners -> (singular body key, the images' owner field)
KINDS = {
    "products": ("product", "product_id"),
    "standard_collections": ("standard_collection", "collection_id"),
    "super_collections": ("super_collection", "collection_id"),
}
COMMON_FIELDS = ("id", "position", "alt", "filename", "extension", "digest", "src", "variation_ids")
EXTENSIONS = {"jpeg": "jpg", "png": "png", "gif": "gif"}
HANDLE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
MAX_LIMIT = 50
DEFAULT_LIMIT = 30


def _kind(request: web.Request) -> str:
    kind = request.match_info["owners"]
    assert kind in OWNER_KINDS  # the route only matches these
    return kind


async def _owner(state: AppState, request: web.Request, org_id: str) -> Owner:
    kind = _kind(request)
    owner = await state.shop.find_owner(org_id, kind, request.match_info["ref"])
    if owner is None:
        raise ApiError(404, f"{KINDS[kind][0]} {request.match_info['ref'][:80]!r} not found")
    return owner


def _owner_json(owner: Owner) -> dict[str, Any]:
    return {"id": owner.id, "handle": owner.handle, "title": owner.title}


# -- owners --------------------------------------------------------------------------------


async def create_owner(request: web.Request) -> web.Response:
    """POST /api/{owners}.json: 201 with the new owner; a duplicate handle is a 422."""
    state = request.app[STATE]
    org_id = await organisation(state, request)
    kind = _kind(request)
    singular = KINDS[kind][0]
    body = await json_object(request)
    item = body.get(singular)
    if not isinstance(item, dict):
        raise ApiError(400, f"{singular}: required object")
    handle = item.get("handle")
    if not isinstance(handle, str) or not handle:
        raise ApiError(400, f"{singular}.handle: required string")
    if len(handle) > 255 or not set(handle) <= HANDLE_CHARS:
        raise ApiError(422, f"{singular}.handle: use lower-case letters, digits and '-'")
    title = item.get("title", "")
    if not isinstance(title, str) or len(title) > 1024:
        raise ApiError(400, f"{singular}.title: must be a string")
    try:
        owner = await state.shop.create_owner(org_id, kind, handle, title)
    except HandleTaken:
        raise ApiError(422, f"{singular}.handle: {handle!r} is already taken") from None
    return json_response({singular: _owner_json(owner)}, status=201)


async def list_owners(request: web.Request) -> web.Response:
    state = request.app[STATE]
    org_id = await organisation(state, request)
    kind = _kind(request)
    owners = await state.shop.list_owners(org_id, kind)
    return json_response({kind: [_owner_json(o) for o in owners]})


async def get_owner(request: web.Request) -> web.Response:
    state = request.app[STATE]
    owner = await _owner(state, request, await organisation(state, request))
    return json_response({KINDS[owner.kind][0]: _owner_json(owner)})


async def delete_owner(request: web.Request) -> web.Response:
    """DELETE /api/{owners}/{ref}.json: the owner and all its images."""
    state = request.app[STATE]
    owner = await _owner(state, request, await organisation(state, request))
    for proxy_id in await state.shop.delete_owner(owner):
        await _remove_files(state, proxy_id)
    return json_response({})


# -- images: reading -----------------------------------------------------------------------


def _int_param(
    request: web.Request, name: str, default: int | None, low: int, high: int
) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(400, f"{name}: must be a whole number, got {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise ApiError(400, f"{name}: must be between {low} and {high}, got {value}")
    return value


def _fields(request: web.Request, owner: Owner) -> tuple[str, ...]:
    allowed = (*COMMON_FIELDS, KINDS[owner.kind][1])
    text = request.query.get("fields")
    if not text:
        return allowed
    asked = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in asked if f not in allowed]
    if unknown or not asked:
        raise ApiError(
            400, f"fields: unknown field(s) {', '.join(unknown)[:200]} (use {', '.join(allowed)})"
        )
    return asked


def _image_json(
    state: AppState, owner: Owner, image: StoreImage, fields: tuple[str, ...] | None = None
) -> dict[str, Any]:
    full: dict[str, Any] = {
        "id": image.id,
        KINDS[owner.kind][1]: owner.id,
        "position": image.position,
        "alt": image.alt,
        "filename": image.filename,
        "extension": image.extension,
        "digest": image.digest,
        "src": f"{state.settings.public_base()}/images/{image.proxy_id}?{image.digest}",
        "variation_ids": image.variation_ids,
    }
    return full if fields is None else {k: v for k, v in full.items() if k in fields}


async def list_images(request: web.Request) -> web.Response:
    """GET …/images.json: by position; limit (<= 50), page (from 1), since_id, fields."""
    state = request.app[STATE]
    owner = await _owner(state, request, await organisation(state, request))
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    page = _int_param(request, "page", 1, 1, 10**9)
    since_id = _int_param(request, "since_id", None, 0, 2**62)
    fields = _fields(request, owner)
    assert limit is not None and page is not None
    images = await state.shop.list_images(owner, limit, page, since_id)
    return json_response({"images": [_image_json(state, owner, i, fields) for i in images]})


async def count_images(request: web.Request) -> web.Response:
    state = request.app[STATE]
    owner = await _owner(state, request, await organisation(state, request))
    since_id = _int_param(request, "since_id", None, 0, 2**62)
    return json_response({"count": await state.shop.count_images(owner, since_id)})


def _image_id(request: web.Request) -> int:
    text = request.match_info["image_id"]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(400, f"image id must be numeric, got {text[:40]!r}")
    return int(text)


async def _image(state: AppState, request: web.Request) -> tuple[Owner, StoreImage]:
    owner = await _owner(state, request, await organisation(state, request))
    image_id = _image_id(request)
    image = await state.shop.get_image(owner, image_id)
    if image is None:
        raise ApiError(404, f"image {image_id} not found")
    return owner, image


async def get_image(request: web.Request) -> web.Response:
    state = request.app[STATE]
    owner, image = await _image(state, request)
    return json_response({"image": _image_json(state, owner, image, _fields(request, owner))})


# -- images: writing -----------------------------------------------------------------------


def _optional_position(item: dict[str, Any]) -> int | None:
    position = item.get("position")
    if position is None:
        return None
    if isinstance(position, bool) or not isinstance(position, int) or position < 1:
        raise ApiError(400, "image.position: must be a whole number from 1")
    return position


def _variation_ids(item: dict[str, Any]) -> list[int]:
    value = item.get("variation_ids", [])
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ApiError(400, "image.variation_ids: must be a list of whole numbers")
    return value


def _digest(filename: str, path: Path, created_at: float) -> str:
    digest = hashlib.md5(filename.encode(), usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    digest.update(repr(created_at).encode())
    return digest.hexdigest()


async def _take_bytes(state: AppState, item: dict[str, Any], dest: Path) -> str | None:
    """Write the image's bytes to `dest`; returns the default file name (src's last segment)."""
    src, attachment = item.get("src"), item.get("attachment")
    if (src is None) == (attachment is None):
        raise ApiError(400, "image: give exactly one of src and attachment")
    limit = state.settings.limits.max_upload_bytes
    if attachment is not None:
        if not isinstance(attachment, str):
            raise ApiError(400, "image.attachment: must be a base64 string")
        if len(attachment) > limit * 4 // 3 + 4:
            raise ApiError(422, f"image.attachment: larger than {limit} bytes")
        try:
            data = base64.b64decode(attachment, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "image.attachment: not valid base64") from None
        await asyncio.to_thread(_write, dest, data)
        return None
    if not isinstance(src, str) or _scheme(src) not in ("http", "https"):
        raise ApiError(400, "image.src: must be an http(s) URL")
    try:
        await pull_url(state.fetcher, src, dest, limit, retries=1)
    except NotFound:
        raise ApiError(422, "image.src: the URL answered 404 (not found)") from None
    except TooLarge as exc:
        raise ApiError(422, f"image.src: {exc}") from None
    except Unavailable as exc:
        raise ApiError(422, f"image.src: could not be fetched: {exc}") from None
    name = PurePosixPath(unquote(urlsplit(src).path)).name
    return name or None


def _scheme(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parts.scheme


def _write(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


async def create_image(request: web.Request) -> web.Response:
    """POST …/images.json: 201 with the image; png, gif and jpg only, judged by content."""
    state = request.app[STATE]
    owner = await _owner(state, request, await organisation(state, request))
    body = await json_object(request)
    item = body.get("image")
    if not isinstance(item, dict):
        raise ApiError(400, "image: required object")
    alt = item.get("alt", "")
    if not isinstance(alt, str) or len(alt) > 2048:
        raise ApiError(400, "image.alt: must be a string")
    filename = item.get("filename")
    if filename is not None and (not isinstance(filename, str) or not 0 < len(filename) <= 255):
        raise ApiError(400, "image.filename: must be a non-empty string")
    position = _optional_position(item)
    variation_ids = _variation_ids(item)
    await state.admission.admit(1)
    proxy_id = short_id(10)
    dest = state.settings.data_dir / "uploads" / proxy_id
    try:
        default_name = await _take_bytes(state, item, dest)
        try:
            probe = await state.pool.run(pipeline.probe, dest, state.settings.limits.max_pixels)
            await state.pool.run(pipeline.verify, dest, probe.format)
        except pipeline.InvalidImage as exc:
            raise ApiError(422, f"image: not an accepted image ({exc})") from None
        extension = EXTENSIONS.get(probe.format)
        if extension is None:
            raise ApiError(422, f"image: only png, gif and jpg are accepted, not {probe.format}")
        name = filename or default_name or f"image.{extension}"
        created_at = time.time()
        digest = await asyncio.to_thread(_digest, name, dest, created_at)
        try:
            image = await state.shop.add_image(
                owner, position, alt, name, extension, digest, proxy_id, variation_ids, created_at
            )
        except OwnerGone:
            raise ApiError(404, f"{KINDS[owner.kind][0]} {owner.handle!r} not found") from None
    except BaseException:
        await asyncio.to_thread(remove, dest)
        raise
    state.workers.wake()
    return json_response({"image": _image_json(state, owner, image)}, status=201)


async def update_image(request: web.Request) -> web.Response:
    """PUT …/images/{image_id}.json: only alt and position may change."""
    state = request.app[STATE]
    owner, image = await _image(state, request)
    body = await json_object(request)
    item = body.get("image")
    if not isinstance(item, dict):
        raise ApiError(400, "image: required object")
    if "id" not in item:
        raise ApiError(400, "image.id: required")
    if isinstance(item["id"], bool) or item["id"] != image.id:
        raise ApiError(422, f"image.id must equal the id in the URL ({image.id})")
    current = _image_json(state, owner, image)
    changed = sorted(
        k for k, v in item.items() if k not in ("id", "alt", "position") and current.get(k) != v
    )
    if changed:
        raise ApiError(
            422, f"only alt and position can be changed, not: {', '.join(changed)[:200]}"
        )
    alt = item.get("alt")
    if alt is not None and (not isinstance(alt, str) or len(alt) > 2048):
        raise ApiError(400, "image.alt: must be a string")
    updated = await state.shop.update_image(owner, image, alt, _optional_position(item))
    if updated is None:
        raise ApiError(404, f"image {image.id} not found")
    return json_response({"image": _image_json(state, owner, updated)})


async def delete_image(request: web.Request) -> web.Response:
    """DELETE …/images/{image_id}.json: 200 {} and the positions close up."""
    state = request.app[STATE]
    owner, image = await _image(state, request)
    if await state.shop.delete_image(owner, image):
        await _remove_files(state, image.proxy_id)
    return json_response({})


async def _remove_files(state: AppState, proxy_id: str) -> None:
    state.service.forget(proxy_id)
    await asyncio.to_thread(remove, state.layout.image_dir(proxy_id))
    await asyncio.to_thread(remove, state.settings.data_dir / "uploads" / proxy_id)


def setup_store_routes(app: web.Application) -> None:
    owners = "{owners:products|standard_collections|super_collections}"
    base = f"/api/{owners}/{{ref:[^/]+?}}"
    image = f"{base}/images/{{image_id:[^/]+?}}.json"
    r = app.router
    r.add_post(f"/api/{owners}.json", create_owner, name="store-owner-create")
    r.add_get(f"/api/{owners}.json", list_owners, name="store-owners")
    r.add_get(f"{base}/images/count.json", count_images, name="store-images-count")
    r.add_get(f"{base}/images.json", list_images, name="store-images")
    r.add_post(f"{base}/images.json", create_image, name="store-image-create")
    r.add_get(image, get_image, name="store-image")
    r.add_put(image, update_image, name="store-image-update")
    r.add_delete(image, delete_image, name="store-image-delete")
    r.add_get(f"{base}.json", get_owner, name="store-owner")
    r.add_delete(f"{base}.json", delete_owner, name="store-owner-delete")
