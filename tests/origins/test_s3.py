"""The `s3` origin against moto's S3 server on 127.0.0.1: a real endpoint over HTTP."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session  # type: ignore[import-untyped]
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from moto.server import ThreadedMotoServer

from imgproxy.origins.base import NotFound, Unavailable
from imgproxy.origins.s3 import S3Origin
from imgproxy.settings import OriginSettings, load_settings
from tests.conftest import AppFactory, make_image, wait_ready

REGION = "us-east-1"
KEY_ID = "AKIDTESTINGONLY0001"
SECRET = "s3cr3t-Never-Shown-0123456789abcdefXYZ"
_names = itertools.count()
READ_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "*"}],
    }
)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for the whole module."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_ambient_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's AWS environment and profiles out of the tests."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def s3(endpoint: str) -> Iterator[Any]:
    """A synchronous botocore client to arrange buckets and objects on the moto server."""
    client = botocore.session.get_session().create_client(
        "s3",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )
    try:
        yield client
    finally:
        client.close()


def new_bucket(s3: Any, objects: dict[str, bytes] | None = None) -> str:
    """A fresh bucket (one per test, so tests share nothing) holding `objects`."""
    bucket = f"bucket-{next(_names)}"
    s3.create_bucket(Bucket=bucket)
    for key, data in (objects or {}).items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
    return bucket


def origin_settings(endpoint: str, bucket: str, **extra: Any) -> OriginSettings:
    table: dict[str, Any] = {
        "name": "bucket",
        "type": "s3",
        "bucket": bucket,
        "region": REGION,
        "endpoint_url": endpoint,
        "access_key_id": KEY_ID,
        "secret_access_key": SECRET,
        **extra,
    }
    return load_settings(overrides={"origins": [table]}, env={}).origins[0]


@pytest.fixture
async def make_origin() -> AsyncIterator[Any]:
    """Build S3Origins with short timeouts; every one is closed after the test."""
    made: list[S3Origin] = []

    def make(settings: OriginSettings, **kwargs: Any) -> S3Origin:
        kwargs = {"connect_timeout": 1.0, "read_timeout": 2.0, **kwargs}
        origin = S3Origin(settings, **kwargs)
        made.append(origin)
        return origin

    yield make
    for origin in made:
        await origin.aclose()


async def read_all(origin: S3Origin, image_id: str) -> tuple[str, int | None, list[bytes]]:
    async with origin.open(image_id) as source:
        chunks = [chunk async for chunk in source.chunks]
    return source.location, source.size, chunks


async def test_open_streams_the_exact_bytes(s3: Any, endpoint: str, make_origin: Any) -> None:
    """open() yields the uploaded JPEG byte for byte, with its size and an s3:// location."""
    jpeg = make_image(400, 300)
    bucket = new_bucket(s3, {"photo1": jpeg})
    origin = make_origin(origin_settings(endpoint, bucket))
    location, size, chunks = await read_all(origin, "photo1")
    assert b"".join(chunks) == jpeg
    assert size == len(jpeg)
    assert location == f"s3://{bucket}/photo1"


async def test_key_template_with_prefix_and_extensions(
    s3: Any, endpoint: str, make_origin: Any
) -> None:
    """The key template's prefix is applied and extensions are tried in order (.jpg, then .png)."""
    jpeg, png, other = make_image(64, 48), make_image(64, 48, fmt="png"), make_image(32, 32)
    bucket = new_bucket(
        s3, {"pics/both.jpg": jpeg, "pics/both.png": png, "pics/only.png": png, "only.jpg": other}
    )
    origin = make_origin(
        origin_settings(endpoint, bucket, key="pics/{id}", extensions=[".jpg", ".png"])
    )
    location, _, chunks = await read_all(origin, "both")
    assert (location, b"".join(chunks)) == (f"s3://{bucket}/pics/both.jpg", jpeg)
    location, _, chunks = await read_all(origin, "only")
    assert (location, b"".join(chunks)) == (f"s3://{bucket}/pics/only.png", png)


async def test_missing_key_is_not_found(s3: Any, endpoint: str, make_origin: Any) -> None:
    """A key absent under every candidate name is NotFound (so the next origin is tried)."""
    bucket = new_bucket(s3, {"present.jpg": b"x"})
    origin = make_origin(origin_settings(endpoint, bucket, extensions=[".jpg", ".png"]))
    with pytest.raises(NotFound):
        async with origin.open("absent"):
            pass


async def test_missing_bucket_is_permanent_unavailable(
    endpoint: str, make_origin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """NoSuchBucket is a configuration fault, not a missing image: Unavailable, not retried.

    A missing bucket means every ID would be "not found"; reporting it as originalNotFound
    would hide a broken origin, so it is an uploadError like access denied.
    """
    caplog.set_level(logging.WARNING)
    origin = make_origin(origin_settings(endpoint, "no-such-bucket"))
    with pytest.raises(Unavailable) as caught:
        async with origin.open("anything"):
            pass
    assert caught.value.transient is False
    assert "NoSuchBucket" in str(caught.value)
    assert "NoSuchBucket" in caplog.text  # the cause is logged


async def test_access_denied_is_unavailable_and_hides_credentials(
    s3: Any, endpoint: str, make_origin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A user without permission gets Unavailable (not retried); its keys appear nowhere."""
    bucket = new_bucket(s3, {"locked.jpg": b"data"})
    iam = iam_client(endpoint)
    try:
        user = f"nobody-{next(_names)}"
        iam.create_user(UserName=user)
        keys = iam.create_access_key(UserName=user)["AccessKey"]
    finally:
        iam.close()
    key_id, secret = keys["AccessKeyId"], keys["SecretAccessKey"]
    settings = origin_settings(
        endpoint, bucket, key="{id}.jpg", access_key_id=key_id, secret_access_key=secret
    )
    origin = make_origin(settings)
    caplog.set_level(logging.DEBUG, logger="imgproxy")
    set_moto_auth(endpoint, "0")  # moto checks IAM from now on
    try:
        with pytest.raises(Unavailable) as caught:
            async with origin.open("locked"):
                pass
    finally:
        set_moto_auth(endpoint, "inf")
    assert caught.value.transient is False
    assert "AccessDenied" in str(caught.value)
    for text in (str(caught.value), caplog.text, repr(origin)):
        assert secret not in text
        assert key_id not in text


async def test_closed_port_is_transient_unavailable_quickly(
    make_origin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """An endpoint nobody listens on gives a transient Unavailable within a few seconds."""
    caplog.set_level(logging.DEBUG, logger="imgproxy")
    origin = make_origin(origin_settings(f"http://127.0.0.1:{closed_port()}", "bucket"))
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        async with origin.open("anything"):
            pass
    assert time.monotonic() - started < 10
    assert caught.value.transient is True
    assert "EndpointConnectionError" in str(caught.value)
    for text in (str(caught.value), caplog.text, repr(origin)):
        assert SECRET not in text
        assert KEY_ID not in text


@pytest.fixture
async def fake_s3(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    """An S3 look-alike on loopback for failures moto cannot stage: 503 SlowDown, a cut body."""

    async def handle(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if key == "busy":
            body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            return web.Response(status=503, text=body, content_type="application/xml")
        response = web.StreamResponse(headers={"Content-Length": str(4 << 20)})
        await response.prepare(request)
        await response.write(b"x" * (1 << 20))  # a quarter of what was promised, then hang up
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_get("/{bucket}/{key}", handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    return f"http://127.0.0.1:{server.port}"


async def test_server_error_is_transient_unavailable(fake_s3: str, make_origin: Any) -> None:
    """A 503 SlowDown (after botocore's own retries) is Unavailable and marked transient."""
    origin = make_origin(origin_settings(fake_s3, "bucket"))
    with pytest.raises(Unavailable) as caught:
        async with origin.open("busy"):
            pass
    assert caught.value.transient is True
    assert "SlowDown (HTTP 503)" in str(caught.value)


async def test_body_cut_short_is_unavailable(fake_s3: str, make_origin: Any) -> None:
    """A connection lost while streaming the body surfaces as Unavailable from the chunks."""
    origin = make_origin(origin_settings(fake_s3, "bucket"))
    received = 0
    with pytest.raises(Unavailable) as caught:
        async with origin.open("cut") as source:
            assert source.size == 4 << 20
            async for chunk in source.chunks:
                received += len(chunk)
    assert received < 4 << 20
    assert caught.value.transient is True
    assert "s3://bucket/cut" in str(caught.value)


async def test_credentials_from_the_environment_chain(
    s3: Any, endpoint: str, make_origin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no keys in the settings, botocore's standard chain (here the environment) is used."""
    bucket = new_bucket(s3, {"env": b"from the environment"})
    iam = iam_client(endpoint)
    try:
        user = f"reader-{next(_names)}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=READ_POLICY)
        keys = iam.create_access_key(UserName=user)["AccessKey"]
    finally:
        iam.close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["SecretAccessKey"])
    settings = origin_settings(endpoint, bucket, access_key_id="", secret_access_key="")
    assert settings.access_key_id == settings.secret_access_key == ""
    origin = make_origin(settings)
    # With IAM enforced, only the environment's keys can succeed (the settings have none).
    set_moto_auth(endpoint, "0")
    try:
        _, _, chunks = await read_all(origin, "env")
    finally:
        set_moto_auth(endpoint, "inf")
    assert b"".join(chunks) == b"from the environment"


async def test_repr_hides_credentials(endpoint: str, make_origin: Any) -> None:
    """repr(origin) names the bucket and endpoint but neither key."""
    origin = make_origin(origin_settings(endpoint, "some-bucket"))
    text = repr(origin)
    assert "some-bucket" in text
    assert SECRET not in text
    assert KEY_ID not in text


async def test_list_ids_paginates_and_maps_keys(s3: Any, endpoint: str, make_origin: Any) -> None:
    """list_ids walks every ListObjectsV2 page under the prefix and keeps keys that fit."""
    objects = {f"pics/img{i}.jpg": b"x" for i in range(5)}
    objects |= {
        "pics/notes.txt": b"x",  # wrong extension
        "pics/.jpg": b"x",  # empty ID
        "other/img9.jpg": b"x",  # outside the prefix
        "pics/sub/deep.jpg": b"x",  # "/" is not allowed in an ID
    }
    bucket = new_bucket(s3, objects)
    settings = origin_settings(endpoint, bucket, key="pics/{id}", extensions=[".jpg"])
    origin = make_origin(settings, page_size=2)
    calls: list[dict[str, Any]] = []
    client = await origin._get_client()
    client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda params, **_: calls.append(params)
    )
    ids = [image_id async for image_id in origin.list_ids()]
    assert sorted(ids) == [f"img{i}" for i in range(5)]
    assert len(calls) >= 4  # 9 keys under "pics/" at 2 per page
    assert all(str(call["query_string"].get("max-keys")) == "2" for call in calls)


async def test_large_object_arrives_in_several_chunks(
    s3: Any, endpoint: str, make_origin: Any
) -> None:
    """A 5 MB object is streamed in several chunks, none over 1 MiB, not read whole."""
    data = os.urandom(5 * 1024 * 1024)
    bucket = new_bucket(s3, {"big": data})
    origin = make_origin(origin_settings(endpoint, bucket))
    _, size, chunks = await read_all(origin, "big")
    assert size == len(data)
    assert len(chunks) > 1
    assert max(len(chunk) for chunk in chunks) <= 1 << 20
    assert b"".join(chunks) == data


async def test_concurrent_first_use_creates_one_client(
    s3: Any, endpoint: str, make_origin: Any
) -> None:
    """Many opens racing on a fresh origin share one client."""
    bucket = new_bucket(s3, {"a": b"1"})
    origin = make_origin(origin_settings(endpoint, bucket))
    clients = await asyncio.gather(*(origin._get_client() for _ in range(5)))
    assert all(client is clients[0] for client in clients)


async def test_app_serves_an_image_that_exists_only_in_s3(
    s3_origin_app: Any,
) -> None:
    """The real app pulls an original from S3 and serves every stage of it."""
    client = s3_origin_app
    response = await client.get("/images/s3only?w=300")
    assert response.status == 200
    info = await wait_ready(client, "s3only")
    assert info["status"] == "ready", info
    assert info["stages"] == {"placeholder": True, "display": True, "zoom": True}
    assert (info["width"], info["height"]) == (1000, 600)
    later = await client.get("/images/s3only?w=300")
    assert later.headers["X-Image-Stage"] == "display"
    for path in ("/images/s3only/info.json", "/metrics"):
        text = await (await client.get(path)).text()
        assert SECRET not in text
        assert KEY_ID not in text


@pytest.fixture
async def s3_origin_app(s3: Any, endpoint: str, make_client: AppFactory) -> AsyncIterator[Any]:
    """The real app whose only origin is an S3 bucket holding one 1000x600 JPEG."""
    bucket = new_bucket(s3, {"images/s3only.jpg": make_image(1000, 600)})
    table = {
        "name": "bucket",
        "type": "s3",
        "bucket": bucket,
        "key": "images/{id}",
        "extensions": [".jpg"],
        "region": REGION,
        "endpoint_url": endpoint,
        "access_key_id": KEY_ID,
        "secret_access_key": SECRET,
    }
    client = await make_client([table])
    yield client
    await client.close()


def iam_client(endpoint: str) -> Any:
    """A synchronous IAM client on the moto server, to make users with their own keys."""
    return botocore.session.get_session().create_client(
        "iam",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )


def set_moto_auth(endpoint: str, free_requests: str) -> None:
    """Make moto check IAM after `free_requests` more requests ("inf": never)."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=free_requests.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},  # not a form, so the body reaches moto as is
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
