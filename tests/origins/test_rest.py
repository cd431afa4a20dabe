"""The `rest` origin: a JSON document per ID names the image URL at a JSON pointer."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from imgproxy.origins.base import NotFound, Unavailable
from imgproxy.origins.fetch import make_session
from imgproxy.origins.rest import PointerError, RestOrigin, resolve_pointer
from imgproxy.settings import LimitsSettings, OriginSettings, load_settings
from tests.conftest import AppFactory, make_image, wait_ready

IMAGE = make_image(500, 300)


class Api:
    """A real JSON API and image host on loopback, recording the headers it was sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.docs: dict[str, Any] = {}
        self.base = ""
        self.other = ""

    async def doc(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        name = request.match_info["id"]
        if name not in self.docs:
            return web.json_response({"error": "no such asset"}, status=404)
        value = self.docs[name]
        if isinstance(value, bytes):
            return web.Response(body=value, content_type="application/json")
        return web.json_response(value)

    async def image(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        return web.Response(body=IMAGE, content_type="image/jpeg")


@pytest.fixture
async def api(aiohttp_server: Any) -> Api:
    fake = Api()
    app = web.Application()
    app.router.add_get("/assets/{id}", fake.doc)
    app.router.add_get("/files/{name}", fake.image)
    server = await aiohttp_server(app, host="127.0.0.1")
    # The same server under another origin name (localhost vs 127.0.0.1) to test header scoping.
    fake.base = f"http://127.0.0.1:{server.port}"
    fake.other = f"http://localhost:{server.port}"
    return fake


def rest_settings(api: Api, pointer: str = "/image/url") -> OriginSettings:
    settings = load_settings(
        overrides={
            "origins": [
                {
                    "name": "api",
                    "type": "rest",
                    "url": api.base + "/assets/{id}",
                    "pointer": pointer,
                    "headers": {"Authorization": "Bearer t0ken"},
                }
            ]
        },
        env={},
    )
    return settings.origins[0]


async def read(origin: RestOrigin, image_id: str) -> bytes:
    async with origin.open(image_id) as source:
        return b"".join([chunk async for chunk in source.chunks])


@pytest.fixture
async def session() -> Any:
    s = make_session(LimitsSettings(allow_private_networks=True))
    yield s
    await s.close()


async def test_document_pointer_to_image(api: Api, session: Any) -> None:
    """The image at the pointer's URL is fetched; the token goes to the document and same-origin image."""
    api.docs["a1"] = {"image": {"url": f"{api.base}/files/a1.jpg"}}
    assert await read(RestOrigin(rest_settings(api), session), "a1") == IMAGE
    assert api.seen == [("/assets/a1", "Bearer t0ken"), ("/files/a1.jpg", "Bearer t0ken")]


async def test_token_not_sent_to_another_origin(api: Api, session: Any) -> None:
    """An image URL on another origin is fetched without the API's headers."""
    api.docs["a2"] = {"image": {"url": f"{api.other}/files/a2.jpg"}}
    assert await read(RestOrigin(rest_settings(api), session), "a2") == IMAGE
    assert api.seen[-1] == ("/files/a2.jpg", None)


async def test_relative_url_and_escaped_pointer(api: Api, session: Any) -> None:
    """Relative URLs resolve against the document; ~1 and ~0 and array indexes work in pointers."""
    api.docs["a3"] = {"sizes/all": [{"x~y": "/files/a3.jpg"}]}
    origin = RestOrigin(rest_settings(api, pointer="/sizes~1all/0/x~0y"), session)
    assert await read(origin, "a3") == IMAGE


@pytest.mark.parametrize(
    "document",
    [
        {"image": {}},
        {"image": {"url": ""}},
        {"image": {"url": 42}},
        {"image": "flat"},
        {"image": {"url": "file:///etc/passwd"}},
    ],
)
async def test_document_without_url_is_not_found(
    api: Api, session: Any, document: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A document with nothing usable at the pointer is originalNotFound, with a log line saying so."""
    api.docs["a4"] = document
    with pytest.raises(NotFound):
        await read(RestOrigin(rest_settings(api), session), "a4")
    assert "a4" in caplog.text and "api" in caplog.text


async def test_missing_document_is_not_found(api: Api, session: Any) -> None:
    """A 404 document is originalNotFound."""
    with pytest.raises(NotFound):
        await read(RestOrigin(rest_settings(api), session), "missing")


async def test_invalid_json_is_unavailable(api: Api, session: Any) -> None:
    """A document that is not JSON is an upload error, not a crash; the token is not echoed."""
    api.docs["bad"] = b"{not json"
    with pytest.raises(Unavailable) as caught:
        await read(RestOrigin(rest_settings(api), session), "bad")
    assert "t0ken" not in str(caught.value)


def test_pointer_errors() -> None:
    """RFC 6901 edge cases: leading zeros, past the end, descending into a scalar."""
    doc = {"a": [1, 2], "": {"": "root-empty"}}
    assert resolve_pointer(doc, "") == doc
    assert resolve_pointer(doc, "//") == "root-empty"
    for pointer in ("/a/01", "/a/2", "/a/0/x", "/b", "a"):
        with pytest.raises(PointerError):
            resolve_pointer(doc, pointer)


async def test_rest_origin_end_to_end(make_client: AppFactory, api: Api) -> None:
    """An image that exists only behind the REST API is served through /images/{id} with all stages."""
    api.docs["only-api"] = {"image": {"url": f"{api.base}/files/only-api.jpg"}}
    client = await make_client(
        [
            {
                "name": "api",
                "type": "rest",
                "url": api.base + "/assets/{id}",
                "pointer": "/image/url",
            }
        ]
    )
    info = await wait_ready(client, "only-api")
    assert info["status"] == "ready"
    assert info["stages"] == {"placeholder": True, "display": True, "zoom": True}
    assert (await client.get("/images/nothing-here")).status == 404
