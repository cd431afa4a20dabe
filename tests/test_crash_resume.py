"""Crash safety: a job interrupted by kill -9 resumes when the server starts again."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import FakeOrigin, make_image, poll
from tests.serverproc import free_port, start_server, write_config


async def info(session: aiohttp.ClientSession, base: str, image_id: str) -> dict[str, Any] | None:
    try:
        async with session.get(f"{base}/images/{image_id}/info.json") as response:
            if response.status != 200:
                return None
            data: dict[str, Any] = await response.json()
            return data
    except aiohttp.ClientError:
        return None


async def test_kill_during_download_then_resume(tmp_path: Path, origin_server: FakeOrigin) -> None:
    """kill -9 while a job is downloading; after a restart the image still reaches ready."""
    origin_server.files["survivor"] = make_image(800, 600)
    origin_server.modes["survivor"] = "slow"  # the first download stalls mid-body
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, origin_server.url, port)
    log = tmp_path / "server.log"
    server = start_server(config, log)
    try:
        async with aiohttp.ClientSession() as session:

            async def downloading() -> bool:
                data = await info(session, base, "survivor")
                return data is not None and data["status"] == "downloading"

            await poll(downloading, timeout=30)
            server.send_signal(signal.SIGKILL)
            server.wait(timeout=10)
            del origin_server.modes["survivor"]
            hits_before = origin_server.hits["survivor"]
            server = start_server(config, log)

            async def ready() -> dict[str, Any] | None:
                data = await info(session, base, "survivor")
                return data if data and data["status"] == "ready" else None

            final = await poll(ready, timeout=60)
            assert final["stages"] == {"placeholder": True, "display": True, "zoom": True}
            assert origin_server.hits["survivor"] == hits_before + 1
            async with session.get(f"{base}/images/survivor?w=300") as response:
                assert response.status == 200
                assert response.headers["X-Image-Stage"] == "display"
    finally:
        server.kill()
        server.wait(timeout=10)
    assert "resuming 1 jobs interrupted by a crash" in log.read_text()
    leftovers = [p for p in (tmp_path / "data" / "cache").rglob(".tmp-*")]
    assert leftovers == []
