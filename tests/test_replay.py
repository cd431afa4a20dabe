"""Replayed answers (web/replay.py): plain requests for hot immutable files answered by the
protocol from recorded bytes, on the real guarded server over raw sockets. What a client sees
must not change: the same bytes as the normal handler (Date aside), in request order, and
every request that could get a different answer still takes the normal route."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from imgproxy.app import create_app
from imgproxy.state import STATE, AppState
from imgproxy.web.server import GuardedRunner
from tests.conftest import file_origin, make_image, poll, settings_for
from tests.test_crash_resume import free_port


@dataclass
class Served:
    port: int
    state: AppState
    base: str


@pytest.fixture
async def served(tmp_path: Path, originals: Path) -> AsyncIterator[Served]:
    (originals / "pic").write_bytes(make_image(900, 600))
    settings = settings_for(
        tmp_path,
        [file_origin(originals)],
        server={
            "header_timeout": 0.5,
            "keepalive_timeout": 1.0,
            "cors_origins": ["https://a.test"],
        },
        processing={"widths": [320, 640]},
    )
    app = create_app(settings)
    runner = GuardedRunner(app, settings)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            async with session.get(f"{base}/images/pic/info.json") as response:
                return (await response.json())["status"] == "ready"

        await session.get(f"{base}/images/pic")
        await poll(ready)
    yield Served(port, app[STATE], base)
    await runner.cleanup()


TILE = "/images/pic/v1/zoom_files/0/0_0.jpg"
RENDITION = "/images/pic/v1/640.webp"


class Connection:
    """One keep-alive connection speaking raw HTTP/1.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, *requests: bytes) -> None:
        self.writer.write(b"".join(requests))  # several at once: pipelined

    async def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        length = 0 if head_only or status == 304 else int(headers.get("Content-Length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return status, headers, body

    async def get(self, path: str, *extra: str) -> tuple[int, dict[str, str], bytes]:
        self.send(request(path, *extra))
        return await self.response(head_only=path.startswith("HEAD "))

    async def closed(self, timeout: float = 5) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout) == b""

    def close(self) -> None:
        self.writer.close()


def request(path: str, *extra: str) -> bytes:
    method, _, target = path.rpartition(" ")
    lines = [f"{method or 'GET'} {target} HTTP/1.1", "Host: proxy.test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def without_date(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != "Date"}


async def test_plain_repeats_are_replayed_with_the_same_bytes(served: Served) -> None:
    """The first plain GET goes through the handler; repeats get identical answers from the
    recording (fresh Date), for a tile, a rendition and the zoom descriptor."""
    conn = await Connection.open(served.port)
    for path in (TILE, RENDITION, "/images/pic/v1/zoom.dzi"):
        first = await conn.get(path)
        before = served.state.replays.served
        again = [await conn.get(path) for _ in range(3)]
        assert served.state.replays.served == before + 3
        assert first[0] == 200 and first[2]
        for status, headers, body in again:
            assert (status, without_date(headers), body) == (200, without_date(first[1]), first[2])
            assert headers["Date"].endswith(" GMT")
    conn.close()


async def test_requests_that_could_differ_take_the_normal_route(served: Served) -> None:
    """Conditional, ranged, cross-origin, HEAD, HTTP/1.0, query and Connection: close requests
    are never replayed, and get their own answers."""
    conn = await Connection.open(served.port)
    _, headers, body = await conn.get(TILE)
    etag = headers["ETag"]
    before = served.state.replays.served
    assert (await conn.get(TILE, f"If-None-Match: {etag}"))[0] == 304
    cors = await conn.get(TILE, "Origin: https://a.test")
    assert cors[1]["Access-Control-Allow-Origin"] == "https://a.test"
    other = await conn.get(TILE, "Origin: https://b.test")
    assert "Access-Control-Allow-Origin" not in other[1]
    head = await conn.get(f"HEAD {TILE}")
    assert head[0] == 200 and head[2] == b""
    assert (await conn.get(f"{TILE}?x=1"))[2] == body
    assert served.state.replays.served == before
    closing = await conn.get(TILE, "Connection: close")
    assert closing[0] == 200 and closing[1].get("Connection") == "close"
    assert await conn.closed()
    conn.close()
    old = await Connection.open(served.port)
    old.writer.write(f"GET {TILE} HTTP/1.0\r\n\r\n".encode())
    answer = await asyncio.wait_for(old.reader.read(), 5)
    old.close()
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(body)
    assert served.state.replays.served == before


async def test_pipelined_answers_stay_in_order(served: Served) -> None:
    """Replayable and ordinary requests sent in one burst are answered in the order sent."""
    conn = await Connection.open(served.port)
    tile = await conn.get(TILE)
    rendition = await conn.get(RENDITION)
    conn.send(
        request(TILE),
        request("/images/pic/info.json"),
        request(RENDITION),
        request("/healthz"),
        request(TILE),
    )
    answers = [await conn.response() for _ in range(5)]
    assert [a[2] for a in answers[::2]] == [tile[2], rendition[2], tile[2]]
    assert answers[1][1]["Content-Type"].startswith("application/json")
    assert b'"id":"pic"' in answers[1][2].replace(b" ", b"")
    assert answers[3][0] == 200
    conn.close()


@pytest.mark.parametrize("burst", [20, 1000])
async def test_pipelined_bursts_are_all_answered(served: Served, burst: int) -> None:
    """Pipelined requests sent before reading any answer (a short burst, and one far past the
    parser's queue bound, which takes the normal route): every answer arrives, whole and in
    order, and the connection stays usable."""
    conn = await Connection.open(served.port)
    _, _, body = await conn.get(RENDITION)
    conn.send(*(request(RENDITION) for _ in range(burst)))
    await conn.writer.drain()
    for _ in range(burst):
        status, _, got = await conn.response()
        assert (status, got) == (200, body)
    assert (await conn.get(TILE))[0] == 200
    conn.close()


async def test_replays_keep_the_connection_timers_right(served: Served) -> None:
    """Replayed requests count as activity: a client asking every 0.2 s for longer than the
    header and keep-alive timeouts is not cut off; once it goes quiet, the connection closes."""
    conn = await Connection.open(served.port)
    await conn.get(TILE)
    before = served.state.replays.served
    for _ in range(8):  # 1.6 s: beyond header_timeout (0.5 s) and keepalive_timeout (1 s)
        assert (await conn.get(TILE))[0] == 200
        await asyncio.sleep(0.2)  # the client's pace, not synchronisation
    assert served.state.replays.served == before + 8
    assert await conn.closed(timeout=5)
    conn.close()


async def test_a_deleted_image_is_no_longer_replayed(tmp_path: Path, originals: Path) -> None:
    """Deleting an image through the store API drops its recordings: the next request is a 404."""
    settings = settings_for(tmp_path, [file_origin(originals)])
    app = create_app(settings)
    runner = GuardedRunner(app, settings)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        org = await app[STATE].accounts.create_organisation("Shop")
        key = {"x-api-key": org.api_key}
        attachment = base64.b64encode(make_image(40, 30, "jpg")).decode()
        async with aiohttp.ClientSession(headers=key) as session:
            product = await _json(
                session, "POST", f"{base}/api/products.json", product={"handle": "p"}
            )
            pid = product["product"]["id"]
            image = await _json(
                session, "POST", f"{base}/api/products/{pid}/images.json",
                image={"attachment": attachment},
            )  # fmt: skip
            proxy_id = image["image"]["src"].split("/images/")[1].split("?")[0]

            async def ready() -> bool:
                async with session.get(f"{base}/images/{proxy_id}/info.json") as response:
                    return (await response.json())["status"] == "ready"

            await poll(ready)
            tile = f"/images/{proxy_id}/v1/zoom_files/0/0_0.jpg"
            conn = await Connection.open(port)
            await conn.get(tile)
            assert (await conn.get(tile))[0] == 200
            assert len(app[STATE].replays) > 0
            async with session.delete(
                f"{base}/api/products/{pid}/images/{image['image']['id']}.json"
            ) as response:
                assert response.status == 200
            assert (await conn.get(tile))[0] == 404
            conn.close()
    finally:
        await runner.cleanup()


async def _json(session: aiohttp.ClientSession, method: str, url: str, **body: Any) -> Any:
    async with session.request(method, url, json=body) as response:
        assert response.status in (200, 201), await response.text()
        return await response.json()
