"""Shared fixtures: real images made with pyvips, a real origin web server on loopback, the real app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pyvips
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from imgproxy.app import create_app
from imgproxy.settings import Settings, load_settings

T = TypeVar("T")


def make_image(
    width: int, height: int, fmt: str = "jpg", alpha: bool = False, seed: int = 1, **save: Any
) -> bytes:
    """A small image with some structure (so encoders and decoders do real work)."""
    xy = pyvips.Image.xyz(width, height)
    r = (xy[0] * 255 / max(width, 1)).cast("uchar")
    g = (xy[1] * 255 / max(height, 1)).cast("uchar")
    b = ((xy[0] + xy[1] * seed) % 256).cast("uchar")
    image = r.bandjoin([g, b]).copy(interpretation="srgb")
    if alpha:
        image = image.bandjoin((xy[0] % 256).cast("uchar"))
    data: bytes = image.write_to_buffer(f".{fmt}", **save)
    return data


async def poll(
    check: Callable[[], Awaitable[T | None]], timeout: float = 20.0, interval: float = 0.05
) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


@dataclass
class FakeOrigin:
    """A real HTTP server on 127.0.0.1 serving `files`; `mode` per name bends its behaviour."""

    files: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    url: str = ""
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        mode = self.modes.get(name, "ok")
        if self.delay:
            await asyncio.sleep(self.delay)
        if mode == "500":
            return web.Response(status=500, text="broken")
        if mode == "403":
            return web.Response(status=403, text="no")
        if name not in self.files:
            return web.Response(status=404, text="not here")
        body = self.files[name]
        if mode == "slow":  # headers at once, then nothing for longer than the read timeout
            response = web.StreamResponse(headers={"Content-Length": str(len(body))})
            await response.prepare(request)
            await response.write(body[:100])
            await asyncio.sleep(30)
            return response
        if mode == "truncated":  # promise the whole body, send half, hang up
            response = web.StreamResponse(headers={"Content-Length": str(len(body))})
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        return web.Response(body=body, content_type="image/jpeg")

    def total_hits(self) -> int:
        return sum(self.hits.values())


@pytest.fixture
async def origin_server(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> FakeOrigin:
    fake = FakeOrigin()
    app = web.Application()
    app.router.add_get("/files/{name}", fake.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    fake.url = f"http://127.0.0.1:{server.port}/files/"
    return fake


def settings_for(tmp_path: Path, origins: list[dict[str, Any]], **sections: Any) -> Settings:
    """Settings with a fresh data dir under tmp_path and small widths so tests stay quick."""
    overrides: dict[str, Any] = {
        "storage": {"dir": str(tmp_path / "data")},
        "processing": {"widths": [320, 640, 960, 1280], "formats": ["webp", "jpg"]},
        # Test origins live on loopback: the address policy is tested on its own.
        "limits": {
            "read_timeout": 2.0,
            "connect_timeout": 2.0,
            "fetch_retries": 1,
            "allow_private_networks": True,
        },
        "server": {"public_url": "http://proxy.test"},
        "origins": origins,
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(overrides=overrides, env={})


@pytest.fixture
def originals(tmp_path: Path) -> Path:
    """A folder for a `file` origin."""
    folder = tmp_path / "originals"
    folder.mkdir()
    return folder


def file_origin(root: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "local", "type": "file", "root": str(root), "path": "{id}", **extra}


def http_origin(fake: FakeOrigin, **extra: Any) -> dict[str, Any]:
    return {"name": "web", "type": "http", "url": fake.url + "{id}", **extra}


AppFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_client(
    tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> AppFactory:
    """Start the real app on a loopback port with the given origins and setting overrides."""

    async def start(origins: list[dict[str, Any]], **sections: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(settings_for(tmp_path, origins, **sections)))

    return start


async def wait_ready(
    client: TestClient[Any, Any], image_id: str, timeout: float = 30
) -> dict[str, Any]:
    """Poll info.json until the image is ready or in error."""

    async def check() -> dict[str, Any] | None:
        response = await client.get(f"/images/{image_id}/info.json")
        if response.status != 200:
            return None
        info: dict[str, Any] = await response.json()
        return info if info["status"] in ("ready", "error") else None

    return await poll(check, timeout=timeout)
