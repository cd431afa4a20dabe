"""The `ftp` origin against a real pyftpdlib server on 127.0.0.1 (plain and explicit TLS)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import socket
import ssl
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imgproxy.origins.base import NotFound, Source, Unavailable
from imgproxy.origins.ftp import FtpOrigin
from imgproxy.settings import OriginSettings
from tests.conftest import AppFactory, make_image, wait_ready

with warnings.catch_warnings():
    # pyftpdlib 2.x is built on asyncore/asynchat, which Python 3.11 flags as deprecated.
    warnings.filterwarnings("ignore", "The (asyncore|asynchat) module", DeprecationWarning)
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer

USER, PASSWORD = "alice", "s3cret"


@dataclass
class FtpServer:
    """A pyftpdlib server in a thread; `logins` records each successful USER/PASS."""

    root: Path
    handler: type[FTPHandler]
    logins: list[str] = field(default_factory=list)
    port: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        logins = self.logins

        class Handler(self.handler):  # type: ignore[name-defined]
            auth_failed_timeout = 0.01  # pyftpdlib waits 3 s before a 530 by default

            def on_login(self, username: str) -> None:
                logins.append(username)

        authorizer = DummyAuthorizer()
        authorizer.add_user(USER, PASSWORD, str(self.root), perm="elr")
        Handler.authorizer = authorizer
        server = FTPServer(("127.0.0.1", 0), Handler, ioloop=IOLoop())
        self.port = server.address[1]

        def run() -> None:
            while not self._stop.is_set():
                server.serve_forever(timeout=0.01, blocking=False, handle_exit=False)
            server.close_all()

        self._thread = threading.Thread(target=run, name="ftp-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def settings(self, **extra: Any) -> OriginSettings:
        values: dict[str, Any] = {
            "name": "ftp",
            "type": "ftp",
            "host": "127.0.0.1",
            "port": self.port,
            "user": USER,
            "password": PASSWORD,
        }
        return OriginSettings(**{**values, **extra})


@contextmanager
def run_server(root: Path, handler: type[FTPHandler] = FTPHandler) -> Iterator[FtpServer]:
    server = FtpServer(root, handler)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ftp_root(tmp_path: Path) -> Path:
    root = tmp_path / "ftp-home"
    root.mkdir()
    return root


@pytest.fixture
def ftp(ftp_root: Path) -> Iterator[FtpServer]:
    with run_server(ftp_root) as server:
        yield server


@pytest.fixture
async def make_origin() -> AsyncIterator[Any]:
    """Build FtpOrigins with short timeouts, and close them all after the test."""
    made: list[FtpOrigin] = []

    def build(settings: OriginSettings, **kwargs: Any) -> FtpOrigin:
        kwargs = {"connect_timeout": 2.0, "read_timeout": 2.0, **kwargs}
        origin = FtpOrigin(settings, **kwargs)
        made.append(origin)
        return origin

    yield build
    for origin in made:
        await origin.aclose()


async def fetch(origin: FtpOrigin, image_id: str) -> tuple[Source, bytes]:
    async with origin.open(image_id) as source:
        data = b"".join([chunk async for chunk in source.chunks])
    return source, data


async def test_open_returns_exact_bytes(ftp: FtpServer, ftp_root: Path, make_origin: Any) -> None:
    """open() yields the file's exact bytes, its SIZE, and a location without credentials."""
    jpeg = make_image(300, 200)
    (ftp_root / "cat.jpg").write_bytes(jpeg)
    origin = make_origin(ftp.settings(path="{id}.jpg"))
    source, data = await fetch(origin, "cat")
    assert data == jpeg
    assert source.size == len(jpeg)
    assert source.location == f"ftp://127.0.0.1:{ftp.port}/cat.jpg"
    assert source.path is None


async def test_template_subfolder_and_extensions_in_order(
    ftp: FtpServer, ftp_root: Path, make_origin: Any
) -> None:
    """A subfolder template tries each extension in order: .jpg first, then .png."""
    (ftp_root / "photos").mkdir()
    jpeg, png = make_image(40, 30), make_image(40, 30, "png")
    (ftp_root / "photos" / "both.jpg").write_bytes(jpeg)
    (ftp_root / "photos" / "both.png").write_bytes(png)
    (ftp_root / "photos" / "only.png").write_bytes(png)
    origin = make_origin(ftp.settings(path="photos/{id}", extensions=(".jpg", ".png")))
    source, data = await fetch(origin, "both")
    assert (source.location.rsplit("/", 1)[1], data) == ("both.jpg", jpeg)
    source, data = await fetch(origin, "only")
    assert (source.location.rsplit("/", 1)[1], data) == ("only.png", png)


async def test_missing_file_is_not_found(ftp: FtpServer, ftp_root: Path, make_origin: Any) -> None:
    """A file that is on no candidate path is NotFound (not Unavailable), and a folder is not a file."""
    (ftp_root / "folder.jpg").mkdir()
    origin = make_origin(ftp.settings(path="{id}", extensions=(".jpg", ".png")))
    with pytest.raises(NotFound):
        await fetch(origin, "nothing")
    with pytest.raises(NotFound):
        await fetch(origin, "folder")
    assert len(ftp.logins) == 1  # a miss leaves the connection usable


async def test_wrong_password_is_permanent_and_never_shown(
    ftp: FtpServer, make_origin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused login is a non-transient Unavailable; the password is in no message, log or repr."""
    caplog.set_level(logging.DEBUG)
    secret = "hunter2-wrong"
    origin = make_origin(ftp.settings(password=secret))
    with pytest.raises(Unavailable) as caught:
        await fetch(origin, "any")
    assert caught.value.transient is False
    assert "530" in str(caught.value)
    for text in (str(caught.value), caplog.text, repr(origin), str(origin)):
        assert secret not in text
    assert PASSWORD not in repr(make_origin(ftp.settings()))


async def test_closed_port_is_transient_and_quick(make_origin: Any) -> None:
    """Nothing listening: a transient Unavailable at once, not after a timeout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = OriginSettings(name="ftp", type="ftp", host="127.0.0.1", port=port, password="pw")
    origin = make_origin(settings)
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await fetch(origin, "any")
    assert caught.value.transient is True
    assert time.monotonic() - started < 1.0
    assert f"ftp://127.0.0.1:{port}" in str(caught.value)


async def test_silent_server_times_out(make_origin: Any) -> None:
    """A server that accepts but never greets gives a transient Unavailable after read_timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        settings = OriginSettings(name="ftp", type="ftp", host="127.0.0.1", port=port)
        origin = make_origin(settings, read_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            await fetch(origin, "any")
    assert caught.value.transient is True
    assert "timed out" in str(caught.value)
    assert time.monotonic() - started < 2.0


async def test_connection_is_reused(ftp: FtpServer, ftp_root: Path, make_origin: Any) -> None:
    """Consecutive downloads share one logged-in connection."""
    for name in ("a", "b", "c"):
        (ftp_root / name).write_bytes(name.encode() * 1000)
    origin = make_origin(ftp.settings())
    for name in ("a", "b", "c", "a"):
        _, data = await fetch(origin, name)
        assert data == name.encode() * 1000
    assert ftp.logins == [USER]


async def test_pool_bounds_concurrent_connections(
    ftp: FtpServer, ftp_root: Path, make_origin: Any
) -> None:
    """Concurrent downloads never open more connections than pool_size, and all complete."""
    jpeg = make_image(200, 100)
    for n in range(6):
        (ftp_root / f"p{n}").write_bytes(jpeg)
    origin = make_origin(ftp.settings(), pool_size=2)
    results = await asyncio.gather(*(fetch(origin, f"p{n}") for n in range(6)))
    assert all(data == jpeg for _, data in results)
    assert len(ftp.logins) == 2


async def test_abandoned_transfer_is_not_reused(
    ftp: FtpServer, ftp_root: Path, make_origin: Any
) -> None:
    """A download stopped midway drops its connection; the next one logs in afresh and works."""
    big = bytes(range(256)) * 8192  # 2 MiB: more than one chunk
    (ftp_root / "big").write_bytes(big)
    origin = make_origin(ftp.settings())
    with pytest.raises(RuntimeError):
        async with origin.open("big") as source:
            await anext(source.chunks)
            raise RuntimeError("consumer gave up (e.g. over max_source_bytes)")
    _, data = await fetch(origin, "big")
    assert data == big
    assert ftp.logins == [USER, USER]


async def test_connection_closed_by_server_is_replaced(ftp_root: Path, make_origin: Any) -> None:
    """A pooled connection the server closed while idle (421 timeout) is replaced transparently."""

    class Impatient(FTPHandler):
        timeout = 0.3  # idle seconds before pyftpdlib says 421 and hangs up

    (ftp_root / "x").write_bytes(b"xyz" * 100)
    with run_server(ftp_root, Impatient) as ftp:
        origin = make_origin(ftp.settings())
        assert (await fetch(origin, "x"))[1] == b"xyz" * 100
        await asyncio.sleep(0.8)
        assert (await fetch(origin, "x"))[1] == b"xyz" * 100
        assert ftp.logins == [USER, USER]


async def test_list_ids_maps_names_and_skips_others(
    ftp: FtpServer, ftp_root: Path, make_origin: Any
) -> None:
    """list_ids walks the template's folder and yields IDs only for names that fit the template."""
    photos = ftp_root / "photos"
    (photos / "deeper").mkdir(parents=True)
    for name in ("a.jpg", "b.png", "c.gif", "-bad.jpg", "d.jpg.bak"):
        (photos / name).write_bytes(b"x")
    (photos / "deeper" / "e.jpg").write_bytes(b"x")  # "deeper/e" is not a valid ID
    (ftp_root / "outside.jpg").write_bytes(b"x")
    origin = make_origin(ftp.settings(path="photos/{id}", extensions=(".jpg", ".png")))
    assert sorted([image_id async for image_id in origin.list_ids()]) == ["a", "b"]
    pattern = make_origin(ftp.settings(path="photos/{id}.jpg", id_pattern="[a-c]"))
    assert [image_id async for image_id in pattern.list_ids()] == ["a"]


async def test_list_ids_from_the_login_folder(
    ftp: FtpServer, ftp_root: Path, make_origin: Any
) -> None:
    """A template with a folder after {id} is listed from the login folder, recursively."""
    for image_id in ("one", "two"):
        (ftp_root / image_id).mkdir()
        (ftp_root / image_id / "original.jpg").write_bytes(b"x")
    (ftp_root / "two" / "other.jpg").write_bytes(b"x")
    origin = make_origin(ftp.settings(path="{id}/original.jpg"))
    assert sorted([image_id async for image_id in origin.list_ids()]) == ["one", "two"]


async def test_tls_against_a_server_without_it(ftp: FtpServer, make_origin: Any) -> None:
    """tls = true against a server that does not speak AUTH TLS fails, permanently, before login."""
    origin = make_origin(ftp.settings(tls=True))
    with pytest.raises(Unavailable) as caught:
        await fetch(origin, "any")
    assert caught.value.transient is False
    assert "AUTH TLS" in str(caught.value)
    assert ftp.logins == []


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgproxy test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_explicit_tls(tmp_path: Path, ftp_root: Path, make_origin: Any) -> None:
    """tls = true does AUTH TLS + PROT P: it works where TLS is required, and checks the certificate."""
    pytest.importorskip("OpenSSL", reason="pyftpdlib's TLS_FTPHandler needs pyOpenSSL")
    from pyftpdlib.handlers import TLS_FTPHandler

    cert_file, key_file = make_certificate(tmp_path)

    class TlsOnly(TLS_FTPHandler):
        certfile = str(cert_file)
        keyfile = str(key_file)
        tls_control_required = True  # no USER/PASS in clear
        tls_data_required = True  # no data connection in clear

    jpeg = make_image(120, 80)
    (ftp_root / "secret.jpg").write_bytes(jpeg)
    with run_server(ftp_root, TlsOnly) as ftp:
        trusting = ssl.create_default_context(cafile=str(cert_file))
        origin = make_origin(ftp.settings(path="{id}.jpg", tls=True), ssl_context=trusting)
        for _ in range(2):
            source, data = await fetch(origin, "secret")
            assert (data, source.size) == (jpeg, len(jpeg))
        assert ftp.logins == [USER]  # the TLS connection is pooled too

        plain = make_origin(ftp.settings(path="{id}.jpg"))
        with pytest.raises(Unavailable):  # the server refuses USER before AUTH TLS
            await fetch(plain, "secret")

        untrusting = make_origin(ftp.settings(path="{id}.jpg", tls=True))  # system CAs only
        with pytest.raises(Unavailable) as caught:
            await fetch(untrusting, "secret")
        assert caught.value.transient is False
        assert "certificate" in str(caught.value)


async def test_image_served_end_to_end_from_ftp(
    ftp: FtpServer, ftp_root: Path, make_client: AppFactory
) -> None:
    """The real app pulls an image that exists only on FTP and builds every stage from it."""
    (ftp_root / "images").mkdir()
    (ftp_root / "images" / "remote.jpg").write_bytes(make_image(900, 600))
    origin = {
        "name": "ftp",
        "type": "ftp",
        "host": "127.0.0.1",
        "port": ftp.port,
        "user": USER,
        "password": PASSWORD,
        "path": "images/{id}.jpg",
    }
    client = await make_client([origin])  # app shutdown closes the origin's pool
    first = await client.get("/images/remote?w=300")
    assert first.status == 200
    info = await wait_ready(client, "remote")
    assert info["status"] == "ready"
    assert info["stages"] == {"placeholder": True, "display": True, "zoom": True}
    assert (info["width"], info["height"]) == (900, 600)
    later = await client.get("/images/remote?w=300")
    assert later.status == 200
    assert later.headers["X-Image-Stage"] == "display"
    info_text = await (await client.get("/images/remote/info.json")).text()
    metrics_text = await (await client.get("/metrics")).text()
    for text in (info_text, metrics_text):
        assert PASSWORD not in text
