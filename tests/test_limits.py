"""Overload and abuse: bounded queue, bounded connections, header/idle timeouts, auth rate limit."""

from __future__ import annotations

import asyncio
import base64
import io
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from imgproxy.app import create_app
from imgproxy.state import STATE
from imgproxy.web.server import GuardedRunner
from tests.conftest import (
    AppFactory,
    FakeOrigin,
    file_origin,
    http_origin,
    make_image,
    settings_for,
)
from tests.test_crash_resume import free_port


@pytest.fixture
async def guarded(tmp_path: Path, originals: Path) -> AsyncIterator[tuple[int, GuardedRunner]]:
    """The real app behind the real guarded server, with tight connection and header bounds."""
    (originals / "ok").write_bytes(make_image(300, 200))
    settings = settings_for(
        tmp_path,
        [file_origin(originals)],
        server={"max_connections": 3, "header_timeout": 0.5, "keepalive_timeout": 1.0},
    )
    runner = GuardedRunner(create_app(settings), settings)
    await runner.setup()
    port = free_port()
    from aiohttp import web

    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield port, runner
    await runner.cleanup()


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


async def test_connections_beyond_the_bound_get_503(
    guarded: tuple[int, GuardedRunner],
) -> None:
    """With max_connections open, one more is answered 503 + Retry-After and closed."""
    port, runner = guarded
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        for _ in range(100):  # the server counts them as it accepts them
            if runner.count.open == 3:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await read_until_closed(reader, 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"Retry-After: 1" in answer
        assert b'"error"' in answer
    finally:
        for _, w in held:
            w.close()
    # once they are gone, new connections are served again
    for _ in range(200):
        if runner.count.open == 0:
            break
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_until_closed(reader, 5)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_slow_headers_are_cut_off(guarded: tuple[int, GuardedRunner]) -> None:
    """A client dripping its request headers is disconnected after header_timeout."""
    port, _ = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    closed = False
    for i in range(40):  # a header line every 0.1 s: never complete
        try:
            writer.write(f"X-Drip-{i}: y\r\n".encode())
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        data = await asyncio.wait_for(reader.read(100), 0.1) if reader.at_eof() else b""
        if reader.at_eof() or data:
            closed = True
            break
        await asyncio.sleep(0.1)
    if not closed:
        closed = (await read_until_closed(reader, 2)) == b""
    writer.close()
    assert closed
    assert time.monotonic() - started < 3


async def test_idle_keepalive_connections_close(guarded: tuple[int, GuardedRunner]) -> None:
    """A served keep-alive connection left idle is closed after keepalive_timeout."""
    port, _ = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    rest = await read_until_closed(reader, 10)  # the body, then EOF when the server closes
    assert b"ok" in rest
    assert time.monotonic() - started < 5
    writer.close()


async def test_well_behaved_keepalive_is_not_cut(guarded: tuple[int, GuardedRunner]) -> None:
    """Requests on one keep-alive connection, each sent promptly, are all answered."""
    port, _ = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        await asyncio.sleep(0.3)  # less than both timeouts
    writer.close()


async def test_full_queue_refuses_new_work(
    make_client: AppFactory, origin_server: FakeOrigin
) -> None:
    """With processing.max_queue jobs pending, cold views and API adds get 503 + Retry-After."""
    for i in range(6):
        origin_server.files[f"q{i}"] = make_image(200, 200)
    origin_server.delay = 2.0  # keep the jobs pending
    client = await make_client(
        [http_origin(origin_server)],
        processing={"max_queue": 3},
        viewer={"first_view_wait": 0.1},
    )
    statuses = [(await client.get(f"/images/q{i}")).status for i in range(6)]
    assert statuses.count(503) >= 3
    refused = await client.get("/images/q5/info.json")
    assert refused.status == 503
    assert refused.headers["Retry-After"]
    assert "queue is full" in (await refused.json())["error"]
    state = client.app[STATE]
    org = await state.accounts.create_organisation("Q")
    add = await client.post(
        "/v2/images/add",
        json={
            "organisationId": org.organisation.id,
            "apiKey": org.api_key,
            "folderId": org.organisation.root_folder,
            "images": [{"sourceUrl": origin_server.url + "q0"}],
        },
    )
    assert add.status == 503
    assert await state.store.queue_depth() <= 3


async def test_repeated_auth_failures_are_rate_limited(
    make_client: AppFactory, originals: Path
) -> None:
    """After limits.auth_failures failures a client gets 429 + Retry-After, even with a good key."""
    client = await make_client([file_origin(originals)], limits={"auth_failures": 5})
    org = await client.app[STATE].accounts.create_organisation("R")
    for _ in range(5):
        response = await client.get("/v1/eis/create/x1", headers={"x-api-key": "nope.nope"})
        assert response.status == 401
    blocked = await client.get("/v1/eis/create/x1", headers={"x-api-key": org.api_key})
    assert blocked.status == 429
    assert blocked.headers["Retry-After"] == "60"
    body: dict[str, Any] = await blocked.json()
    assert "too many failed" in body["error"]


async def test_failed_auth_takes_the_same_time(make_client: AppFactory, originals: Path) -> None:
    """A wrong key of a real organisation and a key of no organisation fail alike (in time, too)."""
    client = await make_client([file_origin(originals)], limits={"auth_failures": 10_000})
    org = await client.app[STATE].accounts.create_organisation("T")
    wrong = f"{org.organisation.id}.not-the-secret"
    unknown = "zzzzzzzzzz.not-the-secret"

    async def timed(key: str) -> float:
        started = time.perf_counter()
        response = await client.get("/v1/eis/create/x1", headers={"x-api-key": key})
        assert response.status == 401
        assert (await response.json()) == {"error": "invalid api key"}
        return time.perf_counter() - started

    samples = {key: [await timed(key) for _ in range(40)] for key in (wrong, unknown, wrong)}
    ratio = statistics.median(samples[wrong]) / statistics.median(samples[unknown])
    assert 0.33 < ratio < 3  # same work on both paths; a loose bound for a noisy machine


async def test_request_body_bounded_by_attachment_size(
    make_client: AppFactory, originals: Path
) -> None:
    """Bodies are accepted up to what a base64 attachment needs, and refused (413) beyond."""
    client = await make_client([file_origin(originals)], limits={"max_upload_bytes": 100_000})
    org = await client.app[STATE].accounts.create_organisation("B")
    headers = {"x-api-key": org.api_key}
    await client.post("/api/products.json", json={"product": {"handle": "p"}}, headers=headers)
    fits = base64.b64encode(make_image(120, 80)).decode()
    ok = await client.post(
        "/api/products/p/images.json", json={"image": {"attachment": fits}}, headers=headers
    )
    assert ok.status == 201
    too_big = b'{"image": {"attachment": "' + b"A" * (100_000 * 4 // 3 + (1 << 20)) + b'"}}'
    refused = await client.post(
        "/api/products/p/images.json",
        data=io.BytesIO(too_big),
        headers={**headers, "Content-Type": "application/json"},
    )
    assert refused.status == 413
    assert "error" in await refused.json()
