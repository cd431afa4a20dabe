"""The OpenAPI document (imgproxy/web/static/openapi.json): it lists every route, and a bounded
schemathesis fuzz of every operation against the real app finds no 5xx and no undocumented answer.

The fuzz runs the app on a loopback port in a thread of its own (schemathesis sends its requests
with the blocking `requests` library). The document's examples name what the fixture creates:
image `IMG_0042` in a file origin, product `summer-hat` with store image 1. Keys are applied by a
schemathesis auth provider (`x-api-key`) and, for the management API whose key travels in the
body, by a `before_call` hook that also keeps every fetch a fuzzed URL would start on this machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings

from imgproxy.app import create_app
from imgproxy.state import STATE
from tests.conftest import file_origin, make_image, settings_for

DOCUMENT: dict[str, Any] = json.loads(
    resources.files("imgproxy.web").joinpath("static", "openapi.json").read_text()
)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# A closed port on loopback: fuzzed source URLs are pointed here so that nothing leaves the machine.
NOWHERE = "127.0.0.1:9"
NOWHERE_BUCKET = "fuzz-nowhere"
KEY_STAND_IN = "live-api-key"

CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"mode": "all", "deterministic": True, "allow-x00": False},
        "phases": {"stateful": {"enabled": False}},
        "checks": {
            "enabled": False,
            "not_a_server_error": {"enabled": True},
            "status_code_conformance": {"enabled": True},
            "content_type_conformance": {"enabled": True},
            "response_schema_conformance": {"enabled": True},
            "response_headers_conformance": {"enabled": True},
            "negative_data_rejection": {"enabled": True},
            "ignored_auth": {"enabled": True},
        },
        "operations": [
            {
                # The preflight answers any path under /images/ by design (a browser asks before it
                # knows whether the image exists): an invalid segment is not refused there.
                "include-method": "OPTIONS",
                "generation": {"mode": "positive"},
            },
            {
                # The body's key depends on the path (`product` for /api/products.json, ...) and
                # the other kinds' keys are ignored: a path-independent schema cannot say that.
                "include-operation-id": "createOwner",
                "checks": {"negative_data_rejection": {"enabled": False}},
            },
        ],
    }
)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)

pytestmark = pytest.mark.filterwarnings(
    # schemathesis' own strategies draw from `random`; hypothesis flags that, not our code.
    "ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"
)


@dataclass
class Live:
    """The app on a loopback port, and what the fixture made in it."""

    url: str
    api_key: str
    org_id: str
    root_folder: str


_live: Live | None = None


def _current() -> Live:
    """The running app (hooks and the auth provider are module-level, so they look it up here)."""
    assert _live is not None, "the live_app fixture is not active"
    return _live


class _AppThread:
    """An event loop in a daemon thread serving the real app."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: TestServer | None = None

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, tmp: Path) -> Live:
        self.thread.start()
        return self.run(self._start(tmp))  # type: ignore[no-any-return]

    async def _start(self, tmp: Path) -> Live:
        originals = tmp / "originals"
        originals.mkdir()
        (originals / "IMG_0042").write_bytes(make_image(1000, 750))
        nowhere = {
            "name": "nowhere",
            "type": "s3",
            "bucket": NOWHERE_BUCKET,
            "key": "{id}",
            "region": "us-east-1",
            "endpoint_url": f"http://{NOWHERE}",
            "access_key_id": "fuzz",
            "secret_access_key": "fuzz",
            "id_pattern": "(?!)",  # never asked for a viewer ID: only source URLs use it
        }
        # Failed keys are part of the fuzz: never let the 429 bound stop it reaching the handlers.
        limits = {"auth_failures": 1_000_000}
        app = create_app(settings_for(tmp, [file_origin(originals), nowhere], limits=limits))
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        made = await app[STATE].accounts.create_organisation("fuzz")
        return Live(
            url=str(self.server.make_url("")).rstrip("/"),
            api_key=made.api_key,
            org_id=made.organisation.id,
            root_folder=made.organisation.root_folder,
        )

    def stop(self) -> None:
        if self.server is not None:
            self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


def _stock(live: Live) -> None:
    """What the document's examples name: a ready IMG_0042, product summer-hat with image 1."""
    headers = {"x-api-key": live.api_key}
    made = requests.post(
        f"{live.url}/api/products.json",
        json={"product": {"handle": "summer-hat", "title": "Summer hat"}},
        headers=headers,
        timeout=30,
    )
    assert made.status_code == 201, made.text
    attachment = base64.b64encode(make_image(200, 150, "png")).decode()
    added = requests.post(
        f"{live.url}/api/products/summer-hat/images.json",
        json={"image": {"attachment": attachment, "filename": "hat.png", "alt": "The hat"}},
        headers=headers,
        timeout=30,
    )
    assert added.status_code == 201, added.text
    assert added.json()["image"]["id"] == 1
    deadline = time.monotonic() + 60
    while True:
        info = requests.get(f"{live.url}/images/IMG_0042/info.json", timeout=30).json()
        if info["status"] == "ready":
            return
        assert info["status"] != "error" and time.monotonic() < deadline, info
        time.sleep(0.1)


@pytest.fixture(scope="module")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The real app on a loopback port, stocked with what the document's examples name."""
    global _live
    runner = _AppThread()
    try:
        live = runner.start(tmp_path_factory.mktemp("openapi"))
        _stock(live)
        _live = live
        schemathesis.hook(before_call)
        yield live
    finally:
        schemathesis.hooks.unregister(before_call)
        _live = None
        runner.stop()


@schema.auth.auth(refresh_interval=None, retry_on=[])
class ApiKeyHeader:
    """`x-api-key` as explicit auth (so `ignored_auth` probes without it and with a wrong one).

    Examples are built at collection, before the app runs: the header carries a stand-in that
    `before_call` swaps for the live organisation's key.
    """

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return KEY_STAND_IN

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "x-api-key": data}


def _hermetic(url: object) -> object:
    """The same URL pointed at a closed loopback port (an s3 one at a bucket configured there)."""
    if not isinstance(url, str):
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return url
    if not host or parts.scheme not in ("http", "https", "ftp", "s3"):
        return url
    netloc = NOWHERE_BUCKET if parts.scheme == "s3" else NOWHERE
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    """Put the real key and root folder in management bodies; keep fuzzed fetches on loopback.

    A global `before_call` hook (registered only while `live_app` is up): schemathesis re-judges
    a case's validity after this hook's edits, so a body made valid here is not held as negative.
    """
    live = _current()
    if case.headers and case.headers.get("x-api-key") == KEY_STAND_IN:
        case.headers["x-api-key"] = live.api_key
    body = case.body
    if not isinstance(body, dict):
        return
    for name, value in (
        ("organisationId", live.org_id),
        ("apiKey", live.api_key),
        ("folderId", live.root_folder),
        ("parentId", live.root_folder),
    ):
        if isinstance(body.get(name), str):
            body[name] = value
    images = body.get("images")
    if isinstance(images, list):
        for item in images:
            if isinstance(item, dict) and "sourceUrl" in item:
                item["sourceUrl"] = _hermetic(item["sourceUrl"])
    image = body.get("image")
    if isinstance(image, dict) and "src" in image:
        image["src"] = _hermetic(image["src"])


def _documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in METHODS
    }


def _registered(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, canonical path) of every route the app registers (canonical paths drop the
    `:regex` parts); HEAD twins left out, and the catch-all preflight `OPTIONS /images/{tail}`
    expanded to each viewer GET path it serves."""
    app = create_app(settings_for(tmp_path, []))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    routes = {(m, p) for m, p in routes if m != "HEAD"}
    if ("OPTIONS", "/images/{tail}") in routes:
        routes.remove(("OPTIONS", "/images/{tail}"))
        routes |= {("OPTIONS", p) for m, p in routes if m == "GET" and p.startswith("/images/")}
    return routes


def test_every_route_is_documented(tmp_path: Path) -> None:
    """The document lists exactly the routes the app registers, method by method."""
    registered, documented = _registered(tmp_path), _documented()
    assert sorted(registered - documented) == [], "routes missing from openapi.json"
    assert sorted(documented - registered) == [], "documented operations with no route"


def test_document_is_valid_openapi_3_1() -> None:
    """The document validates against the OpenAPI 3.1 schema, with unique operation IDs."""
    assert DOCUMENT["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(DOCUMENT).validate()
    ids = [
        item[m]["operationId"] for item in DOCUMENT["paths"].values() for m in item if m in METHODS
    ]
    assert len(ids) == len(set(ids))


def test_every_error_is_the_json_error_object() -> None:
    """Every documented 4xx/5xx answer is `{"error": "..."}` as application/json."""
    responses = DOCUMENT["components"]["responses"]
    error = {"$ref": "#/components/schemas/Error"}
    for path, item in DOCUMENT["paths"].items():
        for method in (m for m in item if m in METHODS):
            for status, response in item[method]["responses"].items():
                if int(status) < 400:
                    continue
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[1]]
                schema_ = response["content"]["application/json"]["schema"]
                where = f"{method.upper()} {path} {status}"
                if (path, status) == ("/healthz", "503"):
                    assert "error" in schema_["required"], where
                else:
                    assert schema_ == error, where


async def test_document_is_served(make_client: Any) -> None:
    """GET /openapi.json serves the document as application/json."""
    client = await make_client([])
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == DOCUMENT


async def test_unmatched_viewer_path_is_404(make_client: Any) -> None:
    """A GET under /images/ that no viewer route matches is a 404, like any unknown path."""
    client = await make_client([])
    for path in ("/images/IMG_0042/v1/640.AAA", "/images/IMG_0042/v1/zoom_files/0/0_0.AAA"):
        response = await client.get(path)
        assert (response.status, await response.json()) == (404, {"error": "not found"}), path


async def test_version_beyond_64_bits_is_404(make_client: Any, originals: Path) -> None:
    """A version too large for any image is a 404, on the rendition, DZI and tile routes."""
    (originals / "pic").write_bytes(make_image(300, 200))
    client = await make_client([file_origin(originals)])
    assert (await client.get("/images/pic/info.json")).status == 200
    huge = 2**63
    for path in (f"v{huge}/320.jpg", f"v{huge}/zoom.dzi", f"v{huge}/zoom_files/0/0_0.jpg"):
        response = await client.get(f"/images/pic/{path}")
        assert response.status == 404, (path, response.status)


async def _organisation(client: Any) -> tuple[dict[str, str], dict[str, str]]:
    """A new organisation: its x-api-key header and its management-body credentials."""
    made = await client.server.app[STATE].accounts.create_organisation("probe")
    body = {"organisationId": made.organisation.id, "apiKey": made.api_key}
    return {"x-api-key": made.api_key}, {**body, "folderId": made.organisation.root_folder}


async def test_unparsable_source_url_is_400(make_client: Any) -> None:
    """A source URL that does not parse is a 400 naming it, in the management and store APIs."""
    client = await make_client([])
    headers, body = await _organisation(client)
    added = await client.post(
        "/v2/images/add", json={**body, "images": [{"sourceUrl": "http://[x/a.png"}]}
    )
    assert added.status == 400, await added.text()
    owner = await client.post(
        "/api/products.json", json={"product": {"handle": "hat"}}, headers=headers
    )
    assert owner.status == 201
    image = await client.post(
        "/api/products/hat/images.json", json={"image": {"src": "http://[x/a.png"}}, headers=headers
    )
    assert image.status == 400, await image.text()


async def test_non_ascii_digits_are_refused(make_client: Any) -> None:
    """Digits like '²' in a store id, handle or number parameter are a 400 or 404, never a 500."""
    client = await make_client([])
    headers, _ = await _organisation(client)
    owner = await client.post(
        "/api/products.json", json={"product": {"handle": "hat"}}, headers=headers
    )
    assert owner.status == 201
    for path in (
        "/api/products/%C2%B2.json",
        "/api/products/hat/images/%C2%B2.json",
        "/api/products/hat/images.json?limit=%C2%B2",
    ):
        response = await client.get(path, headers=headers)
        assert response.status in (400, 404), (path, response.status)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz(case: schemathesis.Case, live_app: Live) -> None:
    """A bounded fuzz of one operation: no 5xx, and every answer is one the document describes."""
    case.call_and_validate(base_url=live_app.url, allow_redirects=False, timeout=30)
