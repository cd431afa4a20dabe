"""Safe fetching: no URL the proxy opens reaches a non-public address unless configured to.

A sentinel server on loopback counts connections; every bypass attempt must be refused by the
address policy (not by a failed connection) and the sentinel must count zero.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from aiohttp.test_utils import TestServer

from imgproxy.origins.base import TooLarge, Unavailable
from imgproxy.origins.fetch import make_session, open_url
from imgproxy.origins.safety import AddressPolicy, is_public, parse_ip
from imgproxy.settings import LimitsSettings
from imgproxy.state import STATE
from tests.conftest import FakeOrigin, make_image, wait_ready


class Sentinel:
    """A loopback TCP server that only counts the connections it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


class StubResolver(AbstractResolver):
    """Names ending in .test resolve from a table; everything else goes to the system resolver."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.system = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host in self.table:
            return [
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
                for address in self.table[host]
            ]
        if host.endswith(".test"):
            raise OSError(f"no such host {host}")
        return await self.system.resolve(host, port, family)

    async def close(self) -> None:
        await self.system.close()


STUB = {
    "loopback.test": ["127.0.0.1"],
    "localhost.": ["127.0.0.1"],  # some resolvers answer the rooted name, this one may not
    "private.test": ["10.0.0.7", "192.168.1.1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "redirector.test": ["127.0.0.1"],
}


@pytest.fixture
async def sentinel() -> AsyncIterator[Sentinel]:
    server = Sentinel()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def redirector(aiohttp_server: Any, sentinel: Sentinel) -> TestServer:
    """A server (reachable as redirector.test, which is allowed) redirecting to private places."""

    async def hop(request: web.Request) -> web.Response:
        target = request.query["to"].replace("PORT", str(sentinel.port))
        raise web.HTTPFound(target)

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/loop?n={int(request.query.get('n', 0)) + 1}")

    app = web.Application()
    app.router.add_get("/hop", hop)
    app.router.add_get("/loop", loop)
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    return server


def limits(**overrides: Any) -> LimitsSettings:
    values: dict[str, Any] = {"connect_timeout": 2.0, "read_timeout": 2.0, **overrides}
    return LimitsSettings(**values)


BYPASSES = [
    "http://127.0.0.1:PORT/",
    "http://localhost:PORT/",
    "http://LOCALHOST:PORT/",
    "http://localhost.:PORT/",
    "http://2130706433:PORT/",  # decimal
    "http://0x7f000001:PORT/",  # hex
    "http://0x7f.0.0.1:PORT/",
    "http://0177.0.0.1:PORT/",  # octal
    "http://017700000001:PORT/",
    "http://127.1:PORT/",  # short form
    "http://0x7f.1:PORT/",
    "http://0.0.0.0:PORT/",
    "http://0:PORT/",
    "http://[::]:PORT/",
    "http://[::1]:PORT/",
    "http://[::ffff:127.0.0.1]:PORT/",  # IPv4-mapped
    "http://[::ffff:7f00:1]:PORT/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]:PORT/",
    "http://[::127.0.0.1]:PORT/",  # IPv4-compatible
    "http://[2002:7f00:1::]:PORT/",  # 6to4 of 127.0.0.1
    "http://[64:ff9b::127.0.0.1]:PORT/",  # NAT64 of 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:PORT/",  # Teredo
    "http://[fe80::1]:PORT/",  # link-local
    "http://[fc00::1]:PORT/",  # unique local
    "http://[ff02::1]:PORT/",  # multicast
    "http://[::ffff:a9fe:a9fe]/latest/meta-data/",  # mapped 169.254.169.254
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1:PORT/",  # carrier-grade NAT
    "http://10.0.0.1:PORT/",
    "http://172.16.0.1:PORT/",
    "http://192.168.1.1:PORT/",
    "http://224.0.0.1:PORT/",  # multicast
    "http://255.255.255.255:PORT/",
    "http://user:pass@127.0.0.1:PORT/",
    "http://loopback.test:PORT/",  # a name resolving to loopback
    "http://private.test:PORT/",
    "http://mapped.test:PORT/",
    "http://metadata.test/",
    "http://redirector.test:RPORT/hop?to=http://127.0.0.1:PORT/",  # redirect to private
    "http://redirector.test:RPORT/hop?to=http://loopback.test:PORT/",
    "http://redirector.test:RPORT/hop?to=http://[::ffff:127.0.0.1]:PORT/",
    "http://redirector.test:RPORT/hop?to=http://2130706433:PORT/",
]


@pytest.mark.parametrize("url", BYPASSES)
async def test_bypass_attempts_are_refused(
    url: str, sentinel: Sentinel, redirector: TestServer
) -> None:
    """Each address trick ends in a refusal by the policy and no connection to the sentinel."""
    target = url.replace("RPORT", str(redirector.port)).replace("PORT", str(sentinel.port))
    session = make_session(limits(allowed_hosts=("redirector.test",)), resolver=StubResolver(STUB))
    try:
        with pytest.raises(Unavailable) as caught:
            async with open_url(session, target):
                pass
    finally:
        await session.close()
    assert "refused" in str(caught.value) or "resolves to" in str(caught.value)
    assert not caught.value.transient
    assert "pass" not in str(caught.value)  # credentials never echoed
    assert sentinel.connections == 0


async def test_allow_private_networks_lets_loopback_through(aiohttp_server: Any) -> None:
    """With allow_private_networks (or an allowed CIDR or host), loopback origins work."""
    body = make_image(64, 64)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/x", serve)
    server = await aiohttp_server(app, host="127.0.0.1")
    for settings in (
        limits(allow_private_networks=True),
        limits(allowed_hosts=("127.0.0.0/8",)),
        limits(allowed_hosts=("loopback.test",)),
    ):
        session = make_session(settings, resolver=StubResolver(STUB))
        try:
            host = "loopback.test" if "loopback.test" in settings.allowed_hosts else "127.0.0.1"
            async with open_url(session, f"http://{host}:{server.port}/x") as source:
                data = b"".join([chunk async for chunk in source.chunks])
            assert data == body
        finally:
            await session.close()


async def test_redirect_loop_is_refused(redirector: TestServer) -> None:
    """More than 5 redirects end the fetch as a non-transient failure."""
    session = make_session(limits(allow_private_networks=True))
    try:
        with pytest.raises(Unavailable, match="redirects") as caught:
            async with open_url(session, f"http://127.0.0.1:{redirector.port}/loop"):
                pass
        assert not caught.value.transient
    finally:
        await session.close()


async def test_slow_drip_ends_within_fetch_timeout(aiohttp_server: Any) -> None:
    """An origin that drips bytes just under the idle timeout is cut off by the total timeout."""

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x")
            await asyncio.sleep(0.2)
        return response

    app = web.Application()
    app.router.add_get("/drip", drip)
    server = await aiohttp_server(app, host="127.0.0.1")
    session = make_session(limits(allow_private_networks=True, read_timeout=1.0, fetch_timeout=1.5))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(Unavailable, match="timed out"):
            async with open_url(session, f"http://127.0.0.1:{server.port}/drip") as source:
                async for _chunk in source.chunks:
                    pass
    finally:
        await session.close()
    assert loop.time() - started < 4


async def test_declared_length_over_limit_is_refused_before_reading(aiohttp_server: Any) -> None:
    """A Content-Length over max_source_bytes is refused before the body is read."""

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 50_000)

    app = web.Application()
    app.router.add_get("/big", big)
    server = await aiohttp_server(app, host="127.0.0.1")
    session = make_session(limits(allow_private_networks=True))
    try:
        with pytest.raises(TooLarge):
            async with open_url(session, f"http://127.0.0.1:{server.port}/big", max_bytes=1000):
                pass
    finally:
        await session.close()


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("2002:808:808::", True),  # 6to4 of a public address
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("100.64.0.1", False),
        ("100.127.255.254", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("::7f00:1", False),
        ("64:ff9b::a00:1", False),
        ("fe80::1%eth0", False),
    ],
)
def test_public_address_judgement(address: str, public: bool) -> None:
    """Only globally routable unicast addresses count as public, unwrapped from IPv6 forms."""
    ip = parse_ip(address)
    assert ip is not None
    assert is_public(ip) is public


def test_policy_networks_and_hosts() -> None:
    """allowed_hosts takes host names (case-insensitive) and CIDR networks (mapped IPv6 too)."""
    policy = AddressPolicy.from_settings(False, ["Images.Internal", "10.1.0.0/16"])
    assert policy.allows("images.internal", "10.9.9.9")
    assert policy.allows("other", "10.1.2.3")
    assert policy.allows("other", "::ffff:10.1.2.3")
    assert not policy.allows("other", "10.2.0.1")
    assert not policy.allows("other", "not-an-ip")


async def test_app_refuses_private_origin_and_stays_healthy(
    make_client: Any, sentinel: Sentinel
) -> None:
    """An http origin pointing at loopback, without allow_private_networks, ends in uploadError."""
    client = await make_client(
        [{"name": "web", "type": "http", "url": f"http://127.0.0.1:{sentinel.port}/{{id}}"}],
        limits={"allow_private_networks": False},
    )
    info = await wait_ready(client, "inside")
    assert (info["status"], info["error"]) == ("error", "uploadError")
    assert "refused" in info["reason"]
    assert sentinel.connections == 0
    assert (await client.get("/healthz")).status == 200


@pytest.mark.parametrize("where", ["url", "headers", "both"])
async def test_credentials_never_leak(
    make_client: Any, origin_server: FakeOrigin, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """Origin headers and URL credentials/tokens appear in no log line, info.json or /metrics."""
    origin_server.modes["leaky"] = "500"
    origin: dict[str, Any] = {"name": "web", "type": "http", "url": origin_server.url + "{id}"}
    if where in ("url", "both"):
        origin["url"] = (
            origin_server.url.replace("http://", "http://user:hunter2@") + "{id}?token=hunter2"
        )
    if where in ("headers", "both"):
        origin["headers"] = {"Authorization": "Bearer hunter2", "X-Key": "hunter2"}
    client = await make_client([origin])
    info = await wait_ready(client, "leaky")
    assert info["error"] == "uploadError"
    texts = [
        caplog.text,
        await (await client.get("/images/leaky/info.json")).text(),
        await (await client.get("/metrics")).text(),
        repr(client.app[STATE].settings),
    ]
    for text in texts:
        assert "hunter2" not in text
