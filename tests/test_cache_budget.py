"""The bounded disk cache: under budget, least recently viewed first, rebuilt on the next view."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pyvips

from imgproxy.cache import budget as budget_module
from imgproxy.state import STATE
from tests.conftest import AppFactory, file_origin, make_image, poll, wait_ready


def disk_use(root: Path) -> int:
    """Bytes of every file under the cache directory, by walking it."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


@pytest.fixture(autouse=True)
def _fast_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget_module, "RECENT", 0.0)  # every image may go at once
    monkeypatch.setattr(budget_module, "TICK", 0.1)


async def fill(client: Any, originals: Path, count: int) -> list[str]:
    ids = [f"img{i}" for i in range(count)]
    for i, image_id in enumerate(ids):
        (originals / image_id).write_bytes(make_image(900, 600, seed=i + 2, Q=95))
    for image_id in ids:
        assert (await client.get(f"/images/{image_id}")).status == 200
        assert (await wait_ready(client, image_id))["status"] == "ready"
    return ids


async def test_cache_stays_under_budget_lru_first(
    make_client: AppFactory, originals: Path, tmp_path: Path
) -> None:
    """Viewing many images keeps disk use under the budget, evicting the least recently viewed."""
    client = await make_client([file_origin(originals)])
    state = client.app[STATE]
    await fill(client, originals, 3)
    per_image = state.budget.total // 3
    assert per_image > 0
    await client.close()
    budget = per_image * 9 // 2  # room for four and a half images
    client = await make_client([file_origin(originals)], storage={"cache_max_bytes": budget})
    state = client.app[STATE]
    cache_root = tmp_path / "data" / "cache"

    async def under_budget() -> bool:
        return state.budget.total <= budget and disk_use(cache_root) <= budget

    await fill(client, originals, 4)
    assert (await client.get("/images/img0?w=300")).status == 200  # img0 is now the newest view
    await state.budget.flush()
    for image_id in ("img4", "img5"):
        (originals / image_id).write_bytes(make_image(900, 600, seed=int(image_id[3:]) + 2, Q=95))
        assert (await client.get(f"/images/{image_id}")).status == 200
        await wait_ready(client, image_id)
        await poll(under_budget, timeout=30)
    records = {f"img{i}": await state.store.get_image(f"img{i}") for i in range(6)}
    evicted = {i for i, r in records.items() if r is not None and not r.display}
    assert "img1" in evicted  # the least recently viewed went first
    assert not {"img0", "img5"} & evicted  # the re-viewed one and the newest stayed
    assert disk_use(cache_root) <= budget


async def test_evicted_image_is_rebuilt_on_next_view(
    make_client: AppFactory, originals: Path
) -> None:
    """An evicted image keeps its record and is rebuilt transparently when viewed again."""
    (originals / "gone").write_bytes(make_image(800, 500))
    client = await make_client([file_origin(originals)])
    state = client.app[STATE]
    await client.get("/images/gone")
    await wait_ready(client, "gone")
    await state.budget.flush()
    freed = await state.budget._evict_one("gone", "image")
    assert freed > 0
    record = await state.store.get_image("gone")
    assert record is not None and not record.placeholder and not record.display
    response = await client.get("/images/gone?w=300")
    assert response.status == 200
    info = await wait_ready(client, "gone")
    assert info["status"] == "ready"
    assert info["stages"] == {"placeholder": True, "display": True, "zoom": True}
    tile = await client.get(f"/images/gone/v{info['version']}/zoom_files/0/0_0.jpg")
    assert tile.status == 200


async def test_versioned_route_revives_evicted_image(
    make_client: AppFactory, originals: Path
) -> None:
    """A versioned rendition of an evicted image is rebuilt, not a dead 404."""
    (originals / "old").write_bytes(make_image(800, 500))
    client = await make_client([file_origin(originals)])
    state = client.app[STATE]
    await client.get("/images/old")
    await wait_ready(client, "old")
    await state.budget._evict_one("old", "image")
    response = await client.get("/images/old/v1/640.webp")
    assert response.status in (200, 503)
    await wait_ready(client, "old")
    assert (await client.get("/images/old/v1/640.webp")).status == 200


async def test_originals_are_evicted_before_derivatives(
    make_client: AppFactory, originals: Path
) -> None:
    """The first phase removes originals only; renditions on request then come from renditions."""
    (originals / "o").write_bytes(make_image(1200, 800))
    client = await make_client([file_origin(originals)])
    state = client.app[STATE]
    await client.get("/images/o")
    await wait_ready(client, "o")
    freed = await state.budget._evict_one("o", "original")
    assert freed > 0
    assert not state.layout.original("o").exists()
    record = await state.store.get_image("o")
    assert record is not None and record.display
    assert (await client.get("/images/o?w=300")).status == 200


async def test_streaming_response_survives_eviction(
    make_client: AppFactory, originals: Path
) -> None:
    """A file evicted while a response streams it still arrives whole and decodable."""
    (originals / "big").write_bytes(make_image(1280, 900, Q=100))
    client = await make_client([file_origin(originals)], processing={"formats": ["png"]})
    state = client.app[STATE]
    await client.get("/images/big")
    await wait_ready(client, "big")
    response = await client.get("/images/big/v1/1280.png")
    assert response.status == 200
    first = await response.content.read(1024)
    await state.budget._evict_one("big", "image")
    assert not state.layout.rendition("big", 1, 1280, "png").exists()
    rest = await response.content.read()
    image = pyvips.Image.new_from_buffer(first + rest, "")
    assert image.width == 1280
    assert image.avg() > 0  # decoded through to the last row
