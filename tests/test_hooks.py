"""The hook API (SPEC §4): create and update by ID with `x-api-key`, on the real app and origins."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pyvips
from aiohttp.test_utils import TestClient

import imgproxy.jobs.runner
import imgproxy.jobs.workers
from imgproxy.processing import pipeline
from imgproxy.state import STATE
from tests.conftest import (
    AppFactory,
    FakeOrigin,
    file_origin,
    http_origin,
    make_image,
    poll,
    wait_ready,
)

Client = TestClient[Any, Any]

CREATED = {"status": "success", "message": "image will be created in a while"}
ON_DEMAND = {"status": "success", "message": "image updated on demand"}
LATER = {"status": "success", "message": "image will be updated in a while"}
INVALID_KEY = {"error": "invalid api key"}

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def solid(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A JPEG of one colour, so that which version is served can be read off any rendition."""
    image = (pyvips.Image.black(width, height, bands=3) + list(rgb)).cast("uchar")
    data: bytes = image.copy(interpretation="srgb").write_to_buffer(".jpg", Q=90)
    return data


@functools.cache
def big_noise() -> bytes:
    """5200x1000 gaussian noise at Q=98: over 3 MB and over 5000 px on a side."""
    noise = pyvips.Image.gaussnoise(5200, 1000, mean=128, sigma=20)
    image = noise.bandjoin([noise, noise]).cast("uchar").copy(interpretation="srgb")
    data: bytes = image.write_to_buffer(".jpg", Q=98)
    return data


def noise(width: int, height: int) -> bytes:
    """A JPEG that compresses badly: many bytes for few pixels."""
    image = pyvips.Image.gaussnoise(width, height, mean=128, sigma=60).cast("uchar")
    data: bytes = (
        image.bandjoin([image, image]).copy(interpretation="srgb").write_to_buffer(".jpg", Q=98)
    )
    return data


def colour_of(data: bytes) -> tuple[int, ...]:
    """The colour at the centre of an encoded image."""
    image = pyvips.Image.new_from_buffer(data, "")
    return tuple(int(v) for v in image.getpoint(image.width // 2, image.height // 2)[:3])


def close_to(colour: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(colour, expected, strict=True))


@pytest.fixture
def quiet_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle workers wait for a wake-up only (no 1 s polling), so the update hook claims the job it
    queued itself and the on-demand path is deterministic (the race is shown by
    test_small_update_is_built_by_the_request_even_when_a_worker_looks_for_work)."""
    monkeypatch.setattr(imgproxy.jobs.workers, "IDLE_POLL", 3600.0)


async def start(
    make_client: AppFactory, origins: list[dict[str, Any]], **sections: Any
) -> tuple[Client, str]:
    """The real app and a fresh organisation's API key."""
    client = await make_client(origins, **sections)
    made = await client.app[STATE].accounts.create_organisation("Acme")
    return client, made.api_key


async def hook(client: Client, action: str, image_id: str, key: str | None) -> tuple[int, Any]:
    headers = {} if key is None else {"x-api-key": key}
    response = await client.get(f"/v1/eis/{action}/{image_id}", headers=headers)
    assert response.content_type == "application/json"
    return response.status, await response.json()


async def info_of(client: Client, image_id: str) -> dict[str, Any]:
    response = await client.get(f"/images/{image_id}/info.json")
    assert response.status == 200, await response.text()
    info: dict[str, Any] = await response.json()
    return info


async def settled(client: Client, image_id: str, version: int = 1) -> dict[str, Any]:
    """Poll until the image is ready at `version`, its job has left the queue and every worker is
    idle, so that what a test observes next comes from the request it makes."""
    state = client.app[STATE]
    store = state.store

    async def check() -> dict[str, Any] | None:
        info = await info_of(client, image_id)
        assert info["status"] != "error", info
        if info["status"] != "ready" or info["version"] != version:
            return None
        if await store.fetchone("SELECT 1 FROM jobs WHERE image_id = ?", (image_id,)):
            return None
        return info if state.workers.busy == 0 else None

    return await poll(check, timeout=30)


async def served(client: Client, image_id: str) -> tuple[int, tuple[int, ...], str]:
    """What a viewer gets now: (X-Image-Version, centre colour, X-Image-Stage)."""
    response = await client.get(f"/images/{image_id}?w=300")
    assert response.status == 200, await response.text()
    body = await response.read()
    return (
        int(response.headers["X-Image-Version"]),
        colour_of(body),
        response.headers["X-Image-Stage"],
    )


async def test_create_queues_full_processing(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """create answers 200 with SPEC's exact body, and the image then reaches ready with every stage."""
    origin_server.files["hooked"] = make_image(1000, 500)
    client, key = await start(make_client, [http_origin(origin_server)])
    assert await hook(client, "create", "hooked", key) == (200, CREATED)
    info = await wait_ready(client, "hooked")
    assert info["status"] == "ready"
    assert info["version"] == 1
    assert (info["width"], info["height"]) == (1000, 500)
    assert info["stages"] == {"placeholder": True, "display": True, "zoom": True}
    response = await client.get("/images/hooked?w=300")
    assert response.status == 200
    assert response.headers["X-Image-Stage"] == "display"
    dzi = await client.get("/images/hooked/v1/zoom.dzi")
    assert dzi.status == 200


async def test_create_of_a_known_id_is_409(make_client: AppFactory, originals: Path) -> None:
    """A second create of an ID, or a create of an ID a viewer already pulled, is 409 word for word."""
    (originals / "twice").write_bytes(make_image(400, 300))
    (originals / "viewed").write_bytes(make_image(400, 300))
    client, key = await start(make_client, [file_origin(originals)])
    assert await hook(client, "create", "twice", key) == (200, CREATED)
    assert await hook(client, "create", "twice", key) == (
        409,
        {"error": "image with id twice already exist"},
    )
    await wait_ready(client, "viewed")
    assert await hook(client, "create", "viewed", key) == (
        409,
        {"error": "image with id viewed already exist"},
    )


async def test_create_of_an_id_no_origin_has_ends_original_not_found(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """A created ID that no origin has is kept, in error originalNotFound (info.json 200, view 404)."""
    client, key = await start(make_client, [http_origin(origin_server)])
    assert await hook(client, "create", "nowhere", key) == (200, CREATED)
    info = await wait_ready(client, "nowhere")
    assert info["status"] == "error"
    assert info["error"] == "originalNotFound"
    again = await client.get("/images/nowhere/info.json")
    assert again.status == 200
    assert (await again.json())["error"] == "originalNotFound"
    view = await client.get("/images/nowhere")
    assert view.status == 404
    assert "error" in await view.json()


async def test_update_of_an_unknown_id_is_404(make_client: AppFactory, originals: Path) -> None:
    """update of an ID nobody created or viewed is 404 word for word, and creates nothing."""
    (originals / "exists-in-origin").write_bytes(make_image(300, 200))
    client, key = await start(make_client, [file_origin(originals)])
    for image_id in ("never-seen", "exists-in-origin"):
        assert await hook(client, "update", image_id, key) == (
            404,
            {"error": f"image with id {image_id} does not exist"},
        )
    assert await client.app[STATE].store.count_images() == 0


async def test_missing_or_wrong_key_is_401(make_client: AppFactory, originals: Path) -> None:
    """Without a key, or with any wrong one, both hooks are 401 word for word and change nothing."""
    (originals / "keyed").write_bytes(make_image(300, 200))
    client, key = await start(make_client, [file_origin(originals)])
    org_id, _, secret = key.partition(".")
    other = await client.app[STATE].accounts.create_organisation("Other")
    wrong = [
        None,
        "",
        "garbage",
        secret,  # the secret without its organisation
        f"{org_id}.",
        f"{org_id}.{secret}x",
        f"{org_id}.{secret[:-1]}",
        f"nosuchorg.{secret}",
        f"{other.organisation.id}.{secret}",  # right secret, wrong organisation
    ]
    for bad in wrong:
        for action in ("create", "update"):
            assert await hook(client, action, "keyed", bad) == (401, INVALID_KEY), (action, bad)
    assert await client.app[STATE].store.count_images() == 0
    assert await hook(client, "create", "keyed", key) == (200, CREATED)
    assert await hook(client, "create", "keyed", other.api_key) == (
        409,
        {"error": "image with id keyed already exist"},
    )


async def test_invalid_id_is_400_with_a_valid_key(
    origin_server: FakeOrigin, make_client: AppFactory
) -> None:
    """An ID outside the allowed form is a JSON 400 with a valid key (401 without), origin untouched."""
    client, key = await start(make_client, [http_origin(origin_server)])
    for image_id in ("a..b", "-leading-dash", "x" * 129, "with space", "semi;colon", "dollar$"):
        for action in ("create", "update"):
            status, body = await hook(client, action, image_id, key)
            assert status == 400, (action, image_id, body)
            assert isinstance(body["error"], str) and body["error"]
            assert await hook(client, action, image_id, None) == (401, INVALID_KEY)
    assert origin_server.total_hits() == 0
    assert await client.app[STATE].store.count_images() == 0


async def test_small_update_is_served_when_the_answer_arrives(
    origin_server: FakeOrigin, make_client: AppFactory, quiet_workers: None
) -> None:
    """A small image's update is built through display during the request: the answer means v2 is served."""
    origin_server.files["small"] = solid(800, 600, RED)
    client, key = await start(make_client, [http_origin(origin_server)])
    assert await hook(client, "create", "small", key) == (200, CREATED)
    await settled(client, "small")
    version, colour, _stage = await served(client, "small")
    assert version == 1 and close_to(colour, RED), colour
    origin_server.files["small"] = solid(1000, 500, BLUE)
    hits = origin_server.hits["small"]

    assert await hook(client, "update", "small", key) == (200, ON_DEMAND)

    assert origin_server.hits["small"] == hits + 1
    info = await info_of(client, "small")
    assert info["version"] == 2
    assert info["stages"]["placeholder"] and info["stages"]["display"]
    assert (info["width"], info["height"]) == (1000, 500)
    assert info["renditions"]["url"] == "http://proxy.test/images/small/v2/{width}.{format}"
    version, colour, stage = await served(client, "small")
    assert (version, stage) == (2, "display")
    assert close_to(colour, BLUE), colour
    final = await settled(client, "small", version=2)
    assert final["stages"] == {"placeholder": True, "display": True, "zoom": True}
    assert (await client.get("/images/small/v2/zoom.dzi")).status == 200


async def test_large_update_is_queued(
    origin_server: FakeOrigin, make_client: AppFactory, quiet_workers: None
) -> None:
    """An update whose original is > 3 MB and > 5000 px on a side is queued; v1 is served until v2 is built."""
    origin_server.files["huge"] = solid(600, 400, RED)
    client, key = await start(make_client, [http_origin(origin_server)])
    assert await hook(client, "create", "huge", key) == (200, CREATED)
    await settled(client, "huge")
    data = big_noise()
    assert len(data) > 3_000_000
    origin_server.files["huge"] = data

    assert await hook(client, "update", "huge", key) == (200, LATER)

    info = await info_of(client, "huge")
    assert info["version"] == 1
    assert (info["width"], info["height"]) == (600, 400)
    version, colour, _stage = await served(client, "huge")
    assert version == 1 and close_to(colour, RED)
    final = await settled(client, "huge", version=2)
    assert (final["width"], final["height"]) == (5200, 1000)
    assert final["stages"] == {"placeholder": True, "display": True, "zoom": True}
    assert (await served(client, "huge"))[0] == 2


async def test_on_demand_rule_is_bytes_or_sides(
    origin_server: FakeOrigin, make_client: AppFactory, quiet_workers: None
) -> None:
    """On demand when at most max_bytes OR both sides at most max_side; queued only when over both."""
    heavy_but_narrow = noise(500, 400)
    light_but_wide = solid(1200, 100, GREEN)
    heavy_and_wide = noise(1200, 400)
    assert len(heavy_but_narrow) > 40_000 and len(heavy_and_wide) > 40_000
    assert len(light_but_wide) < 40_000
    cases = {
        "heavy-narrow": (heavy_but_narrow, ON_DEMAND),
        "light-wide": (light_but_wide, ON_DEMAND),
        "heavy-wide": (heavy_and_wide, LATER),
    }
    client, key = await start(
        make_client,
        [http_origin(origin_server)],
        hooks={"on_demand_max_bytes": 40_000, "on_demand_max_side": 1000},
    )
    for image_id in cases:
        origin_server.files[image_id] = solid(300, 200, RED)
        assert await hook(client, "create", image_id, key) == (200, CREATED)
    for image_id in cases:
        await settled(client, image_id)
    for image_id, (data, answer) in cases.items():
        origin_server.files[image_id] = data
        assert await hook(client, "update", image_id, key) == (200, answer), image_id
        await settled(client, image_id, version=2)


async def test_update_repulls_from_the_origin_that_had_the_id(
    origin_server: FakeOrigin, make_client: AppFactory, originals: Path, quiet_workers: None
) -> None:
    """update pulls from the origin that resolved the ID, even when an earlier origin now has it too."""
    origin_server.files["pic"] = solid(640, 480, RED)
    client, key = await start(make_client, [file_origin(originals), http_origin(origin_server)])
    assert await hook(client, "create", "pic", key) == (200, CREATED)
    await settled(client, "pic")
    (originals / "pic").write_bytes(solid(640, 480, GREEN))  # the first origin, tried first
    origin_server.files["pic"] = solid(900, 300, BLUE)

    assert await hook(client, "update", "pic", key) == (200, ON_DEMAND)

    info = await settled(client, "pic", version=2)
    assert (info["width"], info["height"]) == (900, 300)
    version, colour, _stage = await served(client, "pic")
    assert version == 2 and close_to(colour, BLUE), colour
    assert origin_server.hits["pic"] == 2


async def test_viewers_never_see_an_error_while_a_version_switches(
    origin_server: FakeOrigin, make_client: AppFactory, quiet_workers: None
) -> None:
    """A client polling /images/{id} during an update only ever gets 200s: v1, then v2."""
    origin_server.files["busy"] = solid(1400, 700, RED)
    client, key = await start(make_client, [http_origin(origin_server)])
    assert await hook(client, "create", "busy", key) == (200, CREATED)
    await settled(client, "busy")
    origin_server.files["busy"] = solid(1300, 900, BLUE)
    seen: list[tuple[int, int, tuple[int, ...]]] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            response = await client.get("/images/busy?w=300")
            body = await response.read()
            if response.status != 200:
                seen.append((response.status, 0, ()))
                continue
            seen.append((200, int(response.headers["X-Image-Version"]), colour_of(body)))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        await poll(lambda: asyncio.sleep(0, result=len(seen) >= 3))
        assert await hook(client, "update", "busy", key) == (200, ON_DEMAND)
        await settled(client, "busy", version=2)
        count = len(seen)
        await poll(lambda: asyncio.sleep(0, result=len(seen) >= count + 3))
    finally:
        stop.set()
        await watcher
    assert [s for s in seen if s[0] != 200] == []
    versions = [version for _status, version, _colour in seen]
    assert versions == sorted(versions)
    assert versions[0] == 1 and versions[-1] == 2
    for _status, version, colour in seen:
        assert close_to(colour, RED if version == 1 else BLUE), (version, colour)


async def test_old_version_files_are_removed_after_the_switch(
    origin_server: FakeOrigin,
    make_client: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    quiet_workers: None,
) -> None:
    """After a switch the old version's files outlive it by the grace period, then are removed."""
    grace = 1.5
    monkeypatch.setattr(imgproxy.jobs.runner, "RETIRE_GRACE", grace)
    origin_server.files["old"] = solid(700, 500, RED)
    client, key = await start(make_client, [http_origin(origin_server)])
    layout = client.app[STATE].layout
    assert await hook(client, "create", "old", key) == (200, CREATED)
    await settled(client, "old")
    v1 = layout.version_dir("old", 1)
    assert (v1 / "320.jpg").exists() and layout.dzi("old", 1).exists()
    origin_server.files["old"] = solid(700, 500, BLUE)

    asked = time.monotonic()
    assert await hook(client, "update", "old", key) == (200, ON_DEMAND)

    # The switch happened after `asked`, so until asked + grace the old files must still be there
    # (checked only when this check is itself that early, so that a slow machine cannot fail it).
    old_status = (await client.get("/images/old/v1/320.jpg")).status
    old_file = (v1 / "320.jpg").exists()
    if time.monotonic() - asked < grace:
        assert old_file and old_status == 200

    async def v1_gone() -> bool:
        return not v1.exists()

    await poll(v1_gone, timeout=15)
    await settled(client, "old", version=2)
    assert layout.version_dir("old", 2).exists()
    assert layout.original("old").exists()
    assert (await client.get("/images/old/v1/320.jpg")).status == 404
    version, colour, _stage = await served(client, "old")
    assert version == 2 and close_to(colour, BLUE)


async def test_update_during_a_running_build_is_not_lost(
    origin_server: FakeOrigin,
    make_client: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    quiet_workers: None,
) -> None:
    """An update answered 200 while the create's job is still tiling still leads to the new original."""
    entered, gate = threading.Event(), threading.Event()
    build_tiles = pipeline.build_tiles

    def gated(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        gate.wait(20)
        return build_tiles(*args, **kwargs)

    monkeypatch.setattr(pipeline, "build_tiles", gated)
    origin_server.files["racing"] = solid(640, 480, RED)
    client, key = await start(make_client, [http_origin(origin_server)])
    try:
        assert await hook(client, "create", "racing", key) == (200, CREATED)
        await poll(lambda: asyncio.sleep(0, result=entered.is_set()))
        origin_server.files["racing"] = solid(640, 480, BLUE)
        status, body = await hook(client, "update", "racing", key)
        assert (status, body["status"]) == (200, "success")
    finally:
        gate.set()

    async def done() -> bool:
        info = await info_of(client, "racing")
        store = client.app[STATE].store
        job = await store.fetchone("SELECT 1 FROM jobs WHERE image_id = ?", ("racing",))
        return info["status"] == "ready" and job is None

    await poll(done, timeout=30)
    _version, colour, _stage = await served(client, "racing")
    assert close_to(colour, BLUE), f"still the pre-update original: {colour}"


async def test_update_of_a_vanished_original_does_not_claim_success(
    make_client: AppFactory, originals: Path, quiet_workers: None
) -> None:
    """When the re-pull finds no original any more, the update does not answer 200 success."""
    (originals / "fleeting").write_bytes(solid(400, 300, RED))
    client, key = await start(make_client, [file_origin(originals)])
    await wait_ready(client, "fleeting")
    await settled(client, "fleeting")
    (originals / "fleeting").unlink()
    status, body = await hook(client, "update", "fleeting", key)
    after = await client.get("/images/fleeting/info.json")
    assert after.status == 404  # SPEC §3: nothing left behind; this much already holds
    assert status == 404, body


async def test_small_update_is_built_by_the_request_even_when_a_worker_looks_for_work(
    origin_server: FakeOrigin,
    make_client: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    quiet_workers: None,
) -> None:
    """A small update is built during the request even if a free worker polls the queue meanwhile."""
    origin_server.files["contested"] = solid(600, 400, RED)
    client, key = await start(make_client, [http_origin(origin_server)])
    state = client.app[STATE]
    assert await hook(client, "create", "contested", key) == (200, CREATED)
    await settled(client, "contested")
    origin_server.files["contested"] = solid(600, 400, BLUE)
    requeue = state.store.requeue

    async def requeue_while_a_worker_polls(*args: Any, **kwargs: Any) -> int:
        target = await requeue(*args, **kwargs)
        state.workers.wake()  # a free worker's idle poll (or the end of its last job) falls here

        async def claimed() -> bool:
            row = await state.store.fetchone(
                "SELECT state FROM jobs WHERE image_id = ?", ("contested",)
            )
            return row is None or row[0] == "running"

        await poll(claimed, timeout=5)
        return target

    monkeypatch.setattr(state.store, "requeue", requeue_while_a_worker_polls)
    answer = await hook(client, "update", "contested", key)
    version, colour, _stage = await served(client, "contested")
    assert answer == (200, ON_DEMAND)
    assert version == 2 and close_to(colour, BLUE)
