"""Origin faults through the real app (SPEC §2, §9): a raw loopback HTTP server that fails on purpose.

Every fault ends as a clear error (uploadError, originalNotFound or invalidImage) within its
time limits, never a crash or a hang; afterwards the server is healthy and a good image from the
same origin is still served.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import imgproxy.state
from tests.conftest import AppFactory, make_image, poll, wait_ready

Client = Any
Writer = asyncio.StreamWriter
Handler = Callable[["FaultOrigin", str, Writer], Awaitable[bool]]

GOOD = make_image(400, 300)
RETRY_LIMITS = {"fetch_retries": 2, "read_timeout": 1.0, "fetch_timeout": 5.0}
BACKOFF = (0.5, 1.0)  # registry.pull's waits before the first and second retry
SLACK = 4.0  # seconds of scheduling delay tolerated on a busy 2-core machine; a hang is far more


def head(status: str, length: int | None, keep_alive: bool = False, **extra: str) -> bytes:
    """A raw HTTP/1.1 response head."""
    lines = [f"HTTP/1.1 {status}", "Content-Type: image/jpeg"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    lines += [f"{key.replace('_', '-')}: {value}" for key, value in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def reset(writer: Writer) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER 0), discarding unsent data."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def serve_ok(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    if name not in origin.files:
        writer.write(head("404 Not Found", 9, keep_alive=True) + b"not here\n")
        return True
    body = origin.files[name]
    writer.write(head("200 OK", len(body), keep_alive=True) + body)
    return True


async def serve_500(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    writer.write(head("500 Internal Server Error", 7, keep_alive=True) + b"broken\n")
    return True


async def serve_reset_at_once(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    reset(writer)
    return False


async def serve_close_at_once(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    writer.close()  # an orderly FIN, without a word
    return False


async def serve_reset_mid_body(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    body = origin.files[name]
    writer.write(head("200 OK", len(body)) + body[: len(body) // 2])
    await writer.drain()
    reset(writer)
    return False


async def serve_truncated(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    body = origin.files[name]
    writer.write(head("200 OK", len(body)) + body[: len(body) // 2])
    await writer.drain()
    writer.close()  # an orderly FIN, short of the promised length
    return False


async def serve_drip(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    body = origin.files[name]
    writer.write(head("200 OK", len(body)))
    for byte in range(len(body)):  # one byte every 0.3 s: never idle for read_timeout
        if origin.closing.is_set():
            break
        writer.write(body[byte : byte + 1])
        await writer.drain()
        await asyncio.sleep(0.3)
    return False


async def serve_silent(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    await origin.closing.wait()  # read the request, never answer (until teardown)
    return False


async def serve_not_http(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    """Something that is not HTTP at all answers on the port: binary junk, then a close."""
    writer.write(origin.files[name])
    await writer.drain()
    return False


async def serve_overlong(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    """Declare exactly the image, then send garbage after it on a kept-alive connection."""
    body = origin.files[name]
    writer.write(head("200 OK", len(body), keep_alive=True) + body + b"GARBAGE" * 500)
    return True


async def serve_overlong_short_header(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    """Declare half the image, send all of it on a kept-alive connection."""
    body = origin.files[name]
    writer.write(head("200 OK", len(body) // 2, keep_alive=True) + body)
    return True


async def serve_endless_chunked(origin: FaultOrigin, name: str, writer: Writer) -> bool:
    """A chunked body that never ends: only the client's size limit can stop it."""
    writer.write(head("200 OK", None, Transfer_Encoding="chunked"))
    chunk = origin.files[name][:60_000]
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    while not origin.closing.is_set():
        writer.write(frame)
        await writer.drain()
        origin.sent[name] += len(chunk)
    return False


HANDLERS: dict[str, Handler] = {
    "ok": serve_ok,
    "500": serve_500,
    "reset": serve_reset_at_once,
    "close": serve_close_at_once,
    "reset-mid-body": serve_reset_mid_body,
    "truncated": serve_truncated,
    "drip": serve_drip,
    "silent": serve_silent,
    "not-http": serve_not_http,
    "overlong": serve_overlong,
    "overlong-short-header": serve_overlong_short_header,
    "endless-chunked": serve_endless_chunked,
}


class FaultOrigin:
    """A raw asyncio HTTP/1.1 server on 127.0.0.1; `modes[name]` picks how it answers `name`."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()
        self.url = ""
        self.closing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: dict[Writer, asyncio.Future[None]] = {}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/files/"

    async def stop(self) -> None:
        """Stop listening and end every connection (handlers return on their own, uncancelled)."""
        assert self._server is not None
        self._server.close()
        self.closing.set()
        for writer in list(self._connections):
            writer.transport.abort()
        await asyncio.gather(*self._connections.values(), return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        done = asyncio.get_running_loop().create_future()
        self._connections[writer] = done
        try:
            while not self.closing.is_set():
                request_line = await reader.readline()
                if not request_line:
                    return
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                name = request_line.split()[1].decode().rsplit("/", 1)[-1]
                self.hits[name] += 1
                keep_open = await HANDLERS[self.modes.get(name, "ok")](self, name, writer)
                if not keep_open:
                    return
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: that is what several faults are about
        finally:
            writer.close()
            del self._connections[writer]
            done.set_result(None)


@pytest.fixture
async def fault_origin() -> AsyncIterator[FaultOrigin]:
    origin = FaultOrigin()
    await origin.start()
    yield origin
    await origin.stop()


def origin_config(origin: FaultOrigin) -> dict[str, Any]:
    return {"name": "faulty", "type": "http", "url": origin.url + "{id}"}


async def start(
    make_client: AppFactory, origin: FaultOrigin, **limits: Any
) -> tuple[Client, FaultOrigin]:
    origin.files["good"] = GOOD
    client = await make_client([origin_config(origin)], limits={**RETRY_LIMITS, **limits})
    return client, origin


async def settle(client: Client, image_id: str) -> tuple[dict[str, Any], float]:
    """The first view's outcome and how long it took.

    The first info.json of a cold ID waits (up to viewer.first_view_wait) until an origin is
    known to have it or the pull fails, so that one call sees the error; every fault here
    settles well within that wait.
    """
    started = time.monotonic()
    info = await wait_ready(client, image_id, timeout=20)
    return info, time.monotonic() - started


async def assert_still_serving(client: Client, origin: FaultOrigin, data_dir: Path) -> None:
    """The server is healthy, a good image from the same origin is built, no temp file is left."""
    health = await client.get("/healthz")
    assert health.status == 200
    assert (await health.json())["status"] == "ok"
    info = await wait_ready(client, "good")
    assert info["status"] == "ready", info
    response = await client.get("/images/good?w=300")
    assert response.status == 200
    assert response.headers["X-Image-Stage"] == "display"
    leftovers = await asyncio.to_thread(lambda: list(data_dir.rglob(".tmp-*")))
    assert not leftovers, leftovers


def assert_upload_error(info: dict[str, Any]) -> None:
    assert (info["status"], info["error"]) == ("error", "uploadError"), info
    assert info.get("reason"), info


async def test_server_errors_are_retried_with_backoff_then_upload_error(
    make_client: AppFactory, fault_origin: FaultOrigin, tmp_path: Path
) -> None:
    """A 500 is transient: fetched 1 + fetch_retries times with growing backoff, then uploadError."""
    client, origin = await start(make_client, fault_origin, fetch_retries=2)
    origin.files["bad"] = GOOD
    origin.modes["bad"] = "500"
    info, took = await settle(client, "bad")
    assert_upload_error(info)
    assert "500" in info["reason"]
    assert origin.hits["bad"] == 3
    assert sum(BACKOFF) <= took < sum(BACKOFF) + SLACK  # backoff 0.5 s then 1 s
    await assert_still_serving(client, origin, tmp_path)
    assert origin.hits["bad"] == 3  # nothing retried it behind our back meanwhile


@pytest.mark.parametrize("mode", ["close", "reset", "reset-mid-body", "truncated"])
async def test_broken_transfers_end_as_upload_error(
    make_client: AppFactory, fault_origin: FaultOrigin, tmp_path: Path, mode: str
) -> None:
    """A FIN or RST before any response, a RST mid-body, or a FIN short of Content-Length: retried
    fetch_retries times, then uploadError."""
    client, origin = await start(make_client, fault_origin, fetch_retries=1)
    origin.files["bad"] = make_image(1200, 900)
    origin.modes["bad"] = mode
    info, took = await settle(client, "bad")
    assert_upload_error(info)
    # Two attempts (fetch_retries = 1). When the connection drops before a whole response head
    # has arrived, aiohttp itself resends an idempotent GET once (RFC 9112 §9.3.1), so each of
    # our attempts can be two requests; a FIN after part of the body is never resent.
    attempts = 2
    if mode == "truncated":
        assert origin.hits["bad"] == attempts
    else:
        assert attempts <= origin.hits["bad"] <= 2 * attempts
    assert BACKOFF[0] <= took < BACKOFF[0] + SLACK
    await assert_still_serving(client, origin, tmp_path)


async def test_slow_drip_is_cut_by_the_total_fetch_timeout(
    make_client: AppFactory, fault_origin: FaultOrigin, tmp_path: Path
) -> None:
    """Bytes every 0.3 s never trip the 1 s idle timeout; fetch_timeout (2 s) ends each attempt."""
    client, origin = await start(
        make_client, fault_origin, fetch_retries=1, read_timeout=1.0, fetch_timeout=2.0
    )
    origin.files["drip"] = GOOD
    origin.modes["drip"] = "drip"
    info, took = await settle(client, "drip")
    assert_upload_error(info)
    assert origin.hits["drip"] == 2
    # two attempts of fetch_timeout each, plus one backoff
    assert 2 * 2.0 + BACKOFF[0] <= took < 2 * 2.0 + BACKOFF[0] + SLACK
    await assert_still_serving(client, origin, tmp_path)


async def test_silent_server_is_cut_by_the_idle_timeout(
    make_client: AppFactory, fault_origin: FaultOrigin, tmp_path: Path
) -> None:
    """A server that takes the request and never answers ends as uploadError after read_timeout."""
    client, origin = await start(make_client, fault_origin, fetch_retries=1, read_timeout=1.0)
    origin.modes["mute"] = "silent"
    info, took = await settle(client, "mute")
    assert_upload_error(info)
    assert origin.hits["mute"] == 2
    assert 2 * 1.0 + BACKOFF[0] <= took < 2 * 1.0 + BACKOFF[0] + SLACK
    await assert_still_serving(client, origin, tmp_path)


@pytest.mark.parametrize("mode", ["overlong", "overlong-short-header"])
async def test_body_longer_than_content_length_is_never_half_processed(
    make_client: AppFactory, fault_origin: FaultOrigin, tmp_path: Path, mode: str
) -> None:
    """More bytes than Content-Length declares (trailing junk, or a header declaring half the
    image): the image is built whole or the pull ends uploadError/invalidImage, without a hang."""
    client, origin = await start(make_client, fault_origin)
    origin.files["long"] = make_image(640, 480)
    origin.modes["long"] = mode
    info, took = await settle(client, "long")
    # aiohttp's parser rejects a response followed by bytes that are not a response
    # ("Bad status line"), so in practice this is uploadError after the retries.
    if info["status"] == "ready":
        assert mode == "overlong"
        assert (info["width"], info["height"]) == (640, 480)
    else:
        assert info["status"] == "error", info
        assert info["error"] in ("uploadError", "invalidImage"), info
        assert not info["stages"]["display"]
    assert took < sum(BACKOFF) + SLACK
    await assert_still_serving(client, origin, tmp_path)


async def test_non_http_answer_is_an_upload_error(
    make_client: AppFactory, fault_origin: FaultOrigin, tmp_path: Path
) -> None:
    """A port that answers binary junk instead of HTTP ends as uploadError after the retries."""
    client, origin = await start(make_client, fault_origin, fetch_retries=1)
    origin.files["junk"] = make_image(300, 200)
    origin.modes["junk"] = "not-http"
    info, took = await settle(client, "junk")
    assert_upload_error(info)
    assert origin.hits["junk"] == 2
    assert took < BACKOFF[0] + SLACK
    await assert_still_serving(client, origin, tmp_path)


@pytest.mark.parametrize("mode", ["overlong", "not-http"])
async def test_error_reason_stays_short(
    make_client: AppFactory, fault_origin: FaultOrigin, mode: str
) -> None:
    """The reason of a failed pull is a short line, whatever bytes the origin sent."""
    client, origin = await start(make_client, fault_origin, fetch_retries=0)
    origin.files["noisy"] = make_image(1000, 800)
    origin.modes["noisy"] = mode
    info, _ = await settle(client, "noisy")
    assert_upload_error(info)
    assert len(info["reason"]) <= 500, len(info["reason"])
    assert "\n" not in info["reason"]


async def test_endless_chunked_body_stops_at_max_source_bytes(
    make_client: AppFactory, fault_origin: FaultOrigin, tmp_path: Path
) -> None:
    """A body without Content-Length that never ends is cut at max_source_bytes: invalidImage."""
    client, origin = await start(make_client, fault_origin, max_source_bytes=2_000_000)
    origin.files["endless"] = make_image(400, 300, Q=100) * 4
    origin.modes["endless"] = "endless-chunked"
    info, took = await settle(client, "endless")
    assert (info["status"], info["error"]) == ("error", "invalidImage"), info
    assert "limit" in info["reason"]
    assert origin.hits["endless"] == 1  # too large is final, not retried
    assert took < SLACK
    await assert_still_serving(client, origin, tmp_path)


async def test_not_found_is_permanent_and_not_retried(
    make_client: AppFactory, fault_origin: FaultOrigin, tmp_path: Path
) -> None:
    """A 404 for a hook-created image ends as originalNotFound at once, after exactly one request."""
    client, origin = await start(make_client, fault_origin, fetch_retries=3)
    org = await client.app[imgproxy.state.STATE].accounts.create_organisation("T")
    response = await client.get("/v1/eis/create/missing", headers={"x-api-key": org.api_key})
    assert response.status == 200
    started = time.monotonic()
    info = await wait_ready(client, "missing")
    assert (info["status"], info["error"]) == ("error", "originalNotFound"), info
    assert time.monotonic() - started < SLACK
    assert origin.hits["missing"] == 1
    assert (await client.get("/images/missing")).status == 404
    await assert_still_serving(client, origin, tmp_path)


async def test_plain_view_of_an_id_no_origin_has_leaves_nothing(
    make_client: AppFactory, fault_origin: FaultOrigin, tmp_path: Path
) -> None:
    """A cold view of an ID the origin 404s is a 404 after one request, and no record is kept."""
    client, origin = await start(make_client, fault_origin, fetch_retries=3)
    response = await client.get("/images/nobody/info.json")
    assert response.status == 404
    assert origin.hits["nobody"] == 1
    assert await client.app[imgproxy.state.STATE].store.get_image("nobody") is None
    await assert_still_serving(client, origin, tmp_path)


async def test_info_json_reports_upload_error_without_refetching(
    make_client: AppFactory, fault_origin: FaultOrigin
) -> None:
    """A hook-created image in uploadError shows it in info.json; reading info.json is not a retry."""
    client, origin = await start(make_client, fault_origin, fetch_retries=0)
    origin.modes["down"] = "500"
    org = await client.app[imgproxy.state.STATE].accounts.create_organisation("T")
    response = await client.get("/v1/eis/create/down", headers={"x-api-key": org.api_key})
    assert response.status == 200

    async def failed() -> dict[str, Any] | None:
        info: dict[str, Any] = await (await client.get("/images/down/info.json")).json()
        return info if info["status"] == "error" else None

    info = await poll(failed, timeout=3)
    assert info["error"] == "uploadError"
    for _ in range(5):
        again = await (await client.get("/images/down/info.json")).json()
        assert (again["status"], again["error"]) == ("error", "uploadError")
    assert origin.hits["down"] == 1
