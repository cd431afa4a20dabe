"""`ftp` origin: files under an FTP login, fetched with aioftp over a small pool of logged-in connections.

Data connections are always passive (EPSV, then PASV), and aioftp connects them to `host`
rather than to the address in a PASV reply, so a server cannot point them elsewhere.
`tls = true` is explicit TLS: AUTH TLS after the greeting, then PBSZ 0 / PROT P, so the
login and every data connection are encrypted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import PurePosixPath

import aioftp

from imgproxy.origins.base import NotFound, PatternMixin, Source, Unavailable
from imgproxy.settings import OriginSettings

log = logging.getLogger(__name__)

CHUNK = 1 << 16
CLOSE_TIMEOUT = 2.0  # for QUIT and for waiting on a closed socket; never worth more
FAILURES = (OSError, TimeoutError, aioftp.AIOFTPException)


class FtpOrigin(PatternMixin):
    """`open(id)` downloads `path` (relative to the login directory) over a pooled connection."""

    def __init__(
        self,
        settings: OriginSettings,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._init_pattern(settings)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_size = pool_size
        # None: the system's trusted CAs and hostname checking (tests pass their own CA).
        self._ssl_context = ssl_context
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self._where = f"ftp://{host}:{settings.port}"
        self._idle: list[aioftp.Client] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<FtpOrigin {self.name!r} {self._where} tls={self.settings.tls} "
            f"idle={len(self._idle)}/{self.pool_size}>"
        )

    @asynccontextmanager
    async def open(self, image_id: str) -> AsyncIterator[Source]:
        async with self._slots:
            client, path, size, reader, writer = await self._start(image_id)
            clean = False

            async def chunks() -> AsyncGenerator[bytes, None]:
                nonlocal clean
                try:
                    while True:
                        async with asyncio.timeout(self.read_timeout):
                            block = await reader.read(CHUNK)
                        if not block:
                            break
                        yield block
                    await _close_writer(writer)
                    await client.command(None, "2xx", "1xx")  # 226 Transfer complete
                except FAILURES as exc:
                    raise self._unavailable(exc, f"RETR {path}") from exc
                clean = True

            stream = chunks()
            try:
                yield Source(location=f"{self._where}/{path}", size=size, chunks=stream)
            finally:
                await stream.aclose()
                # Not read to the end (too large, cancelled, failed): the control connection
                # is mid-transfer, so it is dropped rather than returned to the pool.
                await _close_writer(writer)
                await self._release(client, clean)

    async def list_ids(self) -> AsyncIterator[str]:
        """Every ID whose file is under the folder the path template starts in (recursively)."""
        template = self.settings.path
        folder = template.partition("{id}")[0].rpartition("/")[0]
        async with self._slots:
            # A new login rather than a pooled one: listing is rare and may idle between
            # entries, and a fresh connection cannot have gone stale.
            client = await self._login()
            lister = client.list(PurePosixPath(folder) if folder else "", recursive=True)
            clean = False
            try:
                async for path, info in lister:
                    if info.get("type") != "file":
                        continue
                    image_id = self.id_from_name(template, str(path))
                    if image_id is not None:
                        yield image_id
                clean = True
            except FAILURES as exc:
                raise self._unavailable(exc, f"LIST {folder or '.'}") from exc
            finally:
                data = getattr(lister, "stream", None)
                if not clean and isinstance(data, aioftp.StreamIO):
                    await _close_writer(data.writer)
                await self._release(client, clean)

    async def aclose(self) -> None:
        """Say QUIT on every idle connection and close it (errors ignored); later ones are not kept."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(client) for client in idle))

    async def _start(
        self, image_id: str
    ) -> tuple[aioftp.Client, str, int | None, asyncio.StreamReader, asyncio.StreamWriter]:
        """Find the first candidate path that exists and start its RETR; NotFound when none does."""
        while True:
            client, reused = await self._checkout()
            try:
                for path in self.candidates(self.settings.path, image_id):
                    found, size = await self._size(client, path)
                    if not found:
                        continue
                    started = await self._retrieve(client, path)
                    if started is not None:
                        return client, path, size, *started
            except FAILURES as exc:
                await _discard(client)
                if reused and _is_stale(exc):
                    # Closed by the server while idle (timeout, restart): so are its siblings.
                    log.debug("%s: pooled connection gone stale (%s); reconnecting", self, exc)
                    await self._drop_idle()
                    continue
                raise self._unavailable(exc, "download") from exc
            except BaseException:
                await _discard(client)
                raise
            await self._release(client, True)
            raise NotFound(image_id)

    async def _size(self, client: aioftp.Client, path: str) -> tuple[bool, int | None]:
        """(exists, size) from SIZE; a server without SIZE gives (True, None) and RETR decides."""
        code, info = await client.command(f"SIZE {path}", ("2xx", "5xx"))
        if code == "213":
            with contextlib.suppress(ValueError):
                return True, int(info[-1].strip())
            return True, None
        if code == "550":
            return False, None
        return True, None

    async def _retrieve(
        self, client: aioftp.Client, path: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Open a passive data connection and send RETR; None when the server says 550."""
        reader, writer = await client.get_passive_connection("I")
        try:
            await client.command(f"RETR {path}", "1xx")
        except aioftp.StatusCodeError as exc:
            await _close_writer(writer)
            if exc.received_codes[-1] == "550":
                return None
            raise
        except BaseException:
            await _close_writer(writer)
            raise
        return reader, writer

    async def _checkout(self) -> tuple[aioftp.Client, bool]:
        """An idle logged-in connection (reused=True), or a new one."""
        if self._idle:
            return self._idle.pop(), True
        return await self._login(), False

    async def _release(self, client: aioftp.Client, clean: bool) -> None:
        if clean and not self._closed:
            self._idle.append(client)
        else:
            await _discard(client)

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            await _discard(client)

    async def _login(self) -> aioftp.Client:
        """Connect, upgrade to TLS if configured, log in, and switch to binary mode."""
        settings = self.settings
        client = aioftp.Client(
            socket_timeout=self.read_timeout,
            connection_timeout=self.connect_timeout,
            passive_commands=("epsv", "pasv"),
        )
        step = "connect"
        try:
            await client.connect(settings.host, settings.port)
            if settings.tls:
                step = "AUTH TLS"
                await client.upgrade_to_tls(self._ssl_context or ssl.create_default_context())
            step = "login"
            await client.login(settings.user, settings.password)
            step = "TYPE I"  # binary mode before SIZE: some servers refuse SIZE in ASCII mode
            await client.command("TYPE I", "200")
        except FAILURES as exc:
            await _discard(client)
            raise self._unavailable(exc, step) from exc
        except BaseException:
            await _discard(client)
            raise
        return client

    def _unavailable(self, exc: BaseException, step: str) -> Unavailable:
        """An Unavailable that says where and what failed, never with the credentials."""
        transient = True
        if isinstance(exc, aioftp.StatusCodeError):
            code = exc.received_codes[-1] if exc.received_codes else "???"
            reply = " ".join(exc.info) if isinstance(exc.info, list) else str(exc.info)
            detail = f"{step}: server answered {code} {reply.strip()}"
            # 4xx are "try again later" (421 closing, 425 no data connection, 450 busy);
            # 5xx, among them 530 (login refused) and 534 (TLS refused), will not mend.
            transient = code.startswith("4")
            if code == "530":
                detail = f"login refused (530 {reply.strip()})"
        elif isinstance(exc, ssl.SSLCertVerificationError):
            detail = f"{step}: TLS certificate not trusted ({exc.verify_message})"
            transient = False
        elif isinstance(exc, TimeoutError):
            detail = f"{step}: timed out"
        elif isinstance(exc, OSError):
            detail = f"{step}: {exc.strerror or type(exc).__name__}"
        else:
            detail = f"{step}: {type(exc).__name__}"
        return Unavailable(f"{self._where}: {self._redact(detail)}", transient=transient)

    def _redact(self, text: str) -> str:
        """Server replies may echo what they were sent: mask the password and the user name."""
        secrets = [self.settings.password]
        if len(self.settings.user) >= 3:  # masking a one-letter user would garble the message
            secrets.append(self.settings.user)
        for secret in filter(None, secrets):
            text = text.replace(secret, "***")
        return text


def _is_stale(exc: BaseException) -> bool:
    """A failure that means the connection was closed, not that the request was refused."""
    if isinstance(exc, aioftp.StatusCodeError):
        return bool(exc.received_codes) and exc.received_codes[-1] == "421"
    return isinstance(exc, ConnectionError)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a socket and wait (briefly) until it is: a TLS close needs the loop to finish."""
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()


async def _discard(client: aioftp.Client) -> None:
    """Close a connection that will not be reused."""
    with contextlib.suppress(ConnectionError):
        await _close_writer(client.stream.writer)


async def _quit(client: aioftp.Client) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await client.command("QUIT", "2xx")
    await _discard(client)
