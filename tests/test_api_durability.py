"""A 200 from the hook or management API is never lost: kill -9 right after it, restart, all images arrive."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import FakeOrigin, make_image, poll
from tests.serverproc import create_org, free_port, start_server, write_config


async def up(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(f"{base}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def image_statuses(
    session: aiohttp.ClientSession, base: str, org: dict[str, str], ids: list[str]
) -> list[dict[str, Any]] | None:
    body = {"organisationId": org["organisationId"], "apiKey": org["apiKey"], "imageIds": ids}
    try:
        async with session.post(f"{base}/v2/image/status", json=body) as response:
            if response.status != 200:
                return None
            result: list[dict[str, Any]] = (await response.json())["result"]["images"]
            return result
    except aiohttp.ClientError:
        return None


async def test_accepted_work_survives_kill_9(tmp_path: Path, origin_server: FakeOrigin) -> None:
    """Images accepted by images/add and the create hook all reach ready after kill -9 and a restart."""
    names = [f"migrated-{i}.jpg" for i in range(10)]
    hooked = ["hooked-a", "hooked-b"]
    for i, name in enumerate([*names, *hooked]):
        origin_server.files[name] = make_image(500 + 10 * i, 300, seed=i)
    origin_server.delay = 1.0  # every download takes a second: work is pending at the kill
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, origin_server.url, port)
    log = tmp_path / "server.log"
    server = start_server(config, log)
    try:
        async with aiohttp.ClientSession() as session:
            await poll(lambda: up(session, base), timeout=30)
            org = await create_org(config)
            body = {
                "organisationId": org["organisationId"],
                "apiKey": org["apiKey"],
                "folderId": org["rootFolderId"],
                "images": [{"sourceUrl": origin_server.url + name} for name in names],
            }
            async with session.post(f"{base}/v2/images/add", json=body) as response:
                assert response.status == 200, await response.text()
                added = (await response.json())["result"]["images"]
            for image_id in hooked:
                async with session.get(
                    f"{base}/v1/eis/create/{image_id}", headers={"x-api-key": org["apiKey"]}
                ) as response:
                    assert response.status == 200, await response.text()
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)
            assert origin_server.total_hits() < len(names) + len(hooked)  # work was pending
            origin_server.delay = 0.0
            server = start_server(config, log)
            ids = [item["id"] for item in added] + hooked

            async def all_ready() -> list[dict[str, Any]] | None:
                items = await image_statuses(session, base, org, ids)
                if items is None:
                    return None
                assert [item["id"] for item in items] == ids
                for item in items:
                    assert item["status"] != "error", item
                return items if all(item["status"] == "ready" for item in items) else None

            final = await poll(all_ready, timeout=60, interval=0.2)
            assert [item["name"] for item in final[: len(names)]] == names
            for item in final:
                assert item["thumbnail"].startswith(f"{base}/images/{item['id']}/")
            for image_id in hooked:
                async with session.get(f"{base}/images/{image_id}/info.json") as response:
                    info = await response.json()
                assert info["stages"] == {"placeholder": True, "display": True, "zoom": True}
    finally:
        server.kill()
        server.wait(timeout=10)
