"""Crash safety of a migration: kill -9 at random moments, restart, and nothing acknowledged is lost
(SPEC §9: queued and running jobs survive kill -9; a 200 is never lost; files are atomic)."""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
import pyvips

from imgproxy.metadata.store import BULK, MetadataStore
from tests.conftest import FakeOrigin, make_image, poll
from tests.serverproc import create_org, free_port, start_server, write_config

SEED = 20240808  # the kill moments and image sizes: CI replays the same run
KILLS = 3
BATCH = 10  # images acknowledged right after each start, before the kill timer starts
TRICKLE_CALLS = 25  # at most this many one-image add calls race each kill
TRICKLE_PAUSE = 0.05  # spreads them over the kill window (pacing, not synchronisation)
FINAL_BATCH = 12
POOL = KILLS * (BATCH + TRICKLE_CALLS) + FINAL_BATCH
DECODABLE = (".jpg", ".jpeg", ".png", ".webp")
DZ_NAMESPACE = "http://schemas.microsoft.com/deepzoom/2008"


def make_sources(origin: FakeOrigin, rng: random.Random) -> list[str]:
    """Distinct JPEG and PNG (with alpha) originals of 400-900 px on the fake origin."""
    names = []
    for n in range(POOL):
        fmt = "png" if n % 4 == 3 else "jpg"
        name = f"migrated-{n:03d}.{fmt}"
        width, height = rng.randint(400, 900), rng.randint(400, 900)
        origin.files[name] = make_image(width, height, fmt, alpha=fmt == "png", seed=n + 2)
        names.append(name)
    return names


async def healthz(session: aiohttp.ClientSession, base: str) -> dict[str, Any] | None:
    try:
        async with session.get(f"{base}/healthz") as response:
            if response.status != 200:
                return None
            data: dict[str, Any] = await response.json()
            return data
    except aiohttp.ClientError:
        return None


class Migration:
    """Sends images/add calls and remembers every ID a 200 acknowledged."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, org: dict[str, str], origin_url: str
    ) -> None:
        self.session = session
        self.base = base
        self.org = org
        self.origin_url = origin_url
        self.acknowledged: list[str] = []
        self.refused: list[tuple[int, str]] = []  # answers other than 200 from a live server
        self.cut = 0  # calls the kill interrupted (unacknowledged)

    async def add(self, names: list[str]) -> None:
        """One images/add call; raises aiohttp.ClientError when the server dies under it."""
        body = {
            "organisationId": self.org["organisationId"],
            "apiKey": self.org["apiKey"],
            "folderId": self.org["rootFolderId"],
            "images": [{"sourceUrl": self.origin_url + name} for name in names],
        }
        async with self.session.post(f"{self.base}/v2/images/add", json=body) as response:
            if response.status != 200:
                self.refused.append((response.status, await response.text()))
                return
            items = (await response.json())["result"]["images"]
        assert [item["name"] for item in items] == names
        self.acknowledged.extend(item["id"] for item in items)

    async def trickle(self, names: Iterator[str]) -> None:
        """One-image add calls until the server dies (or the calls run out)."""
        for _ in range(TRICKLE_CALLS):
            name = next(names, None)
            if name is None:
                return
            try:
                await self.add([name])
            except aiohttp.ClientConnectorError:
                return  # dead already
            except aiohttp.ClientError:
                self.cut += 1  # killed mid-call: not acknowledged
                return
            await asyncio.sleep(TRICKLE_PAUSE)

    async def statuses(self, ids: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), 100):
            body = {
                "organisationId": self.org["organisationId"],
                "apiKey": self.org["apiKey"],
                "imageIds": ids[start : start + 100],
            }
            async with self.session.post(f"{self.base}/v2/image/status", json=body) as response:
                assert response.status == 200, await response.text()
                found.extend((await response.json())["result"]["images"])
        return found


def decode(data: bytes, what: str) -> tuple[int, int]:
    """Decode every pixel (truncation is an error, not a warning); the image's size."""
    try:
        image = pyvips.Image.new_from_buffer(data, "", fail_on="error")
        image.avg()
    except pyvips.Error as exc:
        raise AssertionError(f"{what}: undecodable ({len(data)} bytes): {exc}") from exc
    return image.width, image.height


def decode_cache_files(root: Path) -> int:
    """Decode every image file under the cache (originals included); how many there were."""
    count = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name == "original" or name.endswith(DECODABLE):
                path = Path(dirpath) / name
                decode(path.read_bytes(), str(path.relative_to(root)))
                count += 1
    return count


async def fetch(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as response:
        assert response.status == 200, f"{url}: {response.status} {await response.text()}"
        data = await response.read()
        assert response.content_length in (None, len(data)), url
        return data


async def check_served(session: aiohttp.ClientSession, base: str, item: dict[str, Any]) -> None:
    """The thumbnail, the display rendition and zoom tiles (top and deepest level) all decode."""
    image_id = item["id"]
    match = re.fullmatch(
        rf"{re.escape(base)}/images/{image_id}/v(\d+)/\d+\.(jpg|png)", item["thumbnail"]
    )
    assert match, item
    version = match.group(1)
    decode(await fetch(session, item["thumbnail"]), item["thumbnail"])
    async with session.get(f"{base}/images/{image_id}?w=320") as response:
        assert response.status == 200, await response.text()
        assert response.headers["X-Image-Stage"] == "display"
        decode(await response.read(), f"{image_id}?w=320")
    zoom = f"{base}/images/{image_id}/v{version}"
    assert decode(await fetch(session, f"{zoom}/zoom_files/0/0_0.jpg"), f"{image_id} tile 0") == (
        1,
        1,
    )
    dzi = (await fetch(session, f"{zoom}/zoom.dzi")).decode()
    size = ElementTree.fromstring(dzi).find(f"{{{DZ_NAMESPACE}}}Size")
    assert size is not None, dzi
    assert (int(size.get("Width", 0)), int(size.get("Height", 0))) == (
        item["width"],
        item["height"],
    )
    deepest = math.ceil(math.log2(max(item["width"], item["height"])))
    tile = f"{zoom}/zoom_files/{deepest}/0_0.jpg"
    assert decode(await fetch(session, tile), tile) == (255, 255)


# Found by the migration test below: a worker's read of the size it had just stored came back
# stale while another query's cursor held the shared reader connection's snapshot open.
async def test_a_read_sees_the_write_it_follows(tmp_path: Path) -> None:
    """A read issued after a committed write sees it, even while other requests read concurrently."""
    store = MetadataStore(tmp_path / "imgproxy.sqlite3")
    await store.open()
    try:
        for n in range(20):
            await store.create_image(f"img{n}", BULK)
        done = False

        async def other_requests() -> None:
            while not done:
                await store.fetchall("SELECT id, status FROM images")

        readers = [asyncio.create_task(other_requests()) for _ in range(4)]
        stale = 0
        for width in range(1, 101):
            await store.set_size("img0", 1, width, width, False)
            seen = await store.get_version("img0", 1)
            stale += seen is None or seen.width != width
        done = True
        await asyncio.gather(*readers)
    finally:
        await store.close()
    assert stale == 0, f"{stale} of 100 reads missed the write they followed"


@pytest.mark.timeout(240)
async def test_migration_survives_three_kills(tmp_path: Path, origin_server: FakeOrigin) -> None:
    """A ≥ 50-image migration killed -9 three times: every acknowledged image ends ready, whole and decodable, and no temporary file is left."""
    rng = random.Random(SEED)
    names = iter(make_sources(origin_server, rng))
    origin_server.delay = 0.05  # downloads take a little while: kills land mid-job
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, origin_server.url, port)
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    org = await create_org(config)
    started = time.monotonic()
    server = start_server(config, log)
    pending_at_kill: list[int] = []
    left_by_kills: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            migration = Migration(session, base, org, origin_server.url)
            await poll(lambda: healthz(session, base), timeout=30)
            for _ in range(KILLS):
                await migration.add([next(names) for _ in range(BATCH)])
                trickle = asyncio.create_task(migration.trickle(names))
                await asyncio.sleep(rng.uniform(0.3, 2.0))  # the kill moment, not a wait
                state = await healthz(session, base)
                pending_at_kill.append(state["queue"] if state else -1)
                server.send_signal(signal.SIGKILL)
                server.wait(timeout=10)
                await asyncio.wait_for(trickle, 30)
                left = list(data_dir.rglob(".tmp-*"))  # what this kill left half-written
                left_by_kills.append(len(left))
                server = start_server(config, log)
                await poll(lambda: healthz(session, base), timeout=30)
                assert [p for p in left if p.exists()] == [], "start-up left temporaries"
            await migration.add([next(names) for _ in range(FINAL_BATCH)])
            ids = migration.acknowledged
            assert migration.refused == []
            assert len(ids) >= 50
            assert len(set(ids)) == len(ids)

            async def all_ready() -> list[dict[str, Any]] | None:
                try:
                    items = await migration.statuses(ids)
                except aiohttp.ClientError:
                    return None
                assert sorted(item["id"] for item in items) == sorted(ids)
                errors = [item for item in items if item["status"] == "error"]
                assert errors == []
                if all(item["status"] == "ready" for item in items):
                    return items
                state = await healthz(session, base)
                idle = state is not None and state["queue"] == 0 and state["workers_busy"] == 0
                if not idle:
                    return None
                # Nothing queued or running: what is not ready now never will be (a lost job).
                items = await migration.statuses(ids)
                assert [i for i in items if i["status"] != "ready"] == [], "jobs were lost"
                return items

            final = await poll(all_ready, timeout=120, interval=0.25)
            limit = asyncio.Semaphore(8)

            async def check(item: dict[str, Any]) -> None:
                async with limit:
                    await check_served(session, base, item)

            await asyncio.gather(*(check(item) for item in final))
            state = await healthz(session, base)
            assert state is not None and state["queue"] == 0
    finally:
        server.kill()
        server.wait(timeout=10)
    decoded = await asyncio.to_thread(decode_cache_files, data_dir / "cache")
    leftovers = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob(".tmp-*"))
    text = log.read_text()
    print(
        f"\n{len(ids)} acknowledged images ({migration.cut} add calls cut by a kill), "
        f"queue at the kills {pending_at_kill}, temporaries left by them {left_by_kills}, "
        f"{decoded} cache files decoded, {time.monotonic() - started:.1f}s"
    )
    assert leftovers == []
    assert any(depth > 0 for depth in pending_at_kill), "no kill landed mid-migration"
    assert "resuming" in text
    assert "Traceback" not in text
