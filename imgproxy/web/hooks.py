"""Hook API (SPEC §4, SmartFrame style): create and update images by ID, key in `x-api-key`."""

from __future__ import annotations

import asyncio

from aiohttp import web

from imgproxy.images.ids import is_valid_id
from imgproxy.jobs.runner import run_job
from imgproxy.metadata.store import HOOK
from imgproxy.state import STATE, AppState
from imgproxy.web.errors import ApiError, image_error, json_response


async def organisation(state: AppState, request: web.Request) -> str:
    """The organisation of the request's `x-api-key`, else 401 (429 after repeated failures)."""
    return await authorised(state, request, request.headers.get("x-api-key"))


async def authorised(
    state: AppState, request: web.Request, api_key: str | None, org_id: str | None = None
) -> str:
    """Check a key (and, for the management API, that it is `org_id`'s); count failures."""
    client = request.remote or "unknown"
    state.auth_failures.check(client)
    org = await state.accounts.authenticate(api_key, org_id)
    if org is None:
        state.auth_failures.failed(client)
        raise ApiError(401, "invalid api key")
    return org


def _hook_id(request: web.Request) -> str:
    image_id = request.match_info["id"]
    if not is_valid_id(image_id):
        raise ApiError(400, f"invalid image id {image_id[:130]!r}")
    return image_id


async def create(request: web.Request) -> web.Response:
    """GET /v1/eis/create/{id}: queue an image for full processing."""
    state = request.app[STATE]
    org_id = await organisation(state, request)
    image_id = _hook_id(request)
    if await state.store.get_image(image_id) is None:
        await state.admission.admit(1)
    if not await state.store.create_image(image_id, HOOK, created_by="hook", org_id=org_id):
        raise ApiError(409, f"image with id {image_id} already exist")
    state.workers.wake()
    await state.service.publish(image_id)
    return json_response({"status": "success", "message": "image will be created in a while"})


async def update(request: web.Request) -> web.Response:
    """GET /v1/eis/update/{id}: pull the original again; small ones are rebuilt within the request."""
    state = request.app[STATE]
    org_id = await organisation(state, request)
    image_id = _hook_id(request)
    record = await state.store.get_image(image_id)
    # Images created through an API belong to their organisation; origin images to everyone.
    if record is None or (record.org_id is not None and record.org_id != org_id):
        raise ApiError(404, f"image with id {image_id} does not exist")
    await state.admission.admit(1)
    later = {"status": "success", "message": "image will be updated in a while"}
    job = await state.store.update_and_claim(image_id, HOOK)
    await state.service.publish(image_id)
    if job is None:  # a worker is building it: it pulls again once done
        state.workers.wake()
        return json_response(later)
    hooks = state.settings.hooks

    def small(size: int, width: int, height: int) -> bool:
        side = hooks.on_demand_max_side
        return size <= hooks.on_demand_max_bytes or (width <= side and height <= side)

    try:
        outcome = await run_job(state.job_context, job, admit=small, through="display")
    except asyncio.CancelledError:
        # The request went away (shutdown): hand the job to the workers, do not strand it.
        await asyncio.shield(state.store.release_job(image_id))
        state.workers.wake()
        raise
    if outcome == "partial":
        return json_response({"status": "success", "message": "image updated on demand"})
    if outcome == "deferred":
        return json_response(later)
    record = await state.store.get_image(image_id)
    if record is None:
        raise ApiError(404, f"image with id {image_id} does not exist")
    if record.status != "error":
        return json_response(later)
    raise image_error(image_id, record.error, record.detail)
