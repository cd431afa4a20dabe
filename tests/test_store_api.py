"""The store image API (SPEC §6, Spiffy Stores style) end to end: the real app, real images.

Every test runs for the three owner kinds (products, standard and super collections); the
tests built on `store_by` run twice more, addressing owners by id and by handle. Returned
`src`s are fetched through the proxy as images.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiosqlite
import pytest
import pyvips
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from imgproxy.state import STATE
from imgproxy.web import store_api
from tests.conftest import AppFactory, FakeOrigin, make_image, poll, wait_ready

PUBLIC = "http://proxy.test"
IMAGE_KEYS = {"id", "position", "alt", "filename", "extension", "digest", "src", "variation_ids"}


@dataclass(frozen=True)
class Kind:
    owners: str  # the URL segment
    singular: str  # the body key
    owner_key: str  # the images' owner field
    other_key: str  # the owner field an image of this kind never has


KINDS = [
    Kind("products", "product", "product_id", "collection_id"),
    Kind("standard_collections", "standard_collection", "collection_id", "product_id"),
    Kind("super_collections", "super_collection", "collection_id", "product_id"),
]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jpg(seed: int = 1, width: int = 24, height: int = 16) -> bytes:
    return make_image(width, height, "jpg", seed=seed)


def png(seed: int = 1) -> bytes:
    return make_image(20, 14, "png", seed=seed)


def gif(seed: int = 1) -> bytes:
    return make_image(18, 12, "gif", seed=seed)


@dataclass
class Store:
    """A client of the store API for one organisation and one owner kind."""

    client: TestClient[Any, Any]
    key: str
    kind: Kind
    by: str  # "id" or "handle": how owners are addressed

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        status: int = 200,
        key: str | None = None,
        raw: bytes | None = None,
    ) -> Any:
        """One request; asserts the status and returns the JSON answer."""
        headers = {"x-api-key": self.key if key is None else key}
        if raw is not None:
            headers["Content-Type"] = "application/json"
        response = await self.client.request(
            method, path, json=body if raw is None else None, data=raw, headers=headers
        )
        assert response.content_type == "application/json"
        payload = await response.json()
        assert response.status == status, (method, path, body or raw, payload)
        return payload

    async def create_owner(self, handle: str, title: str = "A title") -> dict[str, Any]:
        body = {self.kind.singular: {"handle": handle, "title": title}}
        answer = await self.call("POST", f"/api/{self.kind.owners}.json", body, status=201)
        owner: dict[str, Any] = answer[self.kind.singular]
        return owner

    def base(self, owner: dict[str, Any]) -> str:
        return f"/api/{self.kind.owners}/{owner[self.by]}"

    async def add(
        self, owner: dict[str, Any], data: bytes | None = None, status: int = 201, **item: Any
    ) -> dict[str, Any]:
        """POST an image (`data` as a base64 attachment); the image, or the error body."""
        if data is not None:
            item["attachment"] = b64(data)
        answer = await self.call("POST", f"{self.base(owner)}/images.json", {"image": item}, status)
        result: dict[str, Any] = answer["image"] if status == 201 else answer
        return result

    async def images(self, owner: dict[str, Any], query: str = "") -> list[dict[str, Any]]:
        answer = await self.call("GET", f"{self.base(owner)}/images.json{query}")
        assert set(answer) == {"images"}
        images: list[dict[str, Any]] = answer["images"]
        return images

    async def order(self, owner: dict[str, Any]) -> list[int]:
        """Image ids by position, after checking positions are exactly 1..n."""
        images = await self.images(owner, "?limit=50")
        assert [i["position"] for i in images] == list(range(1, len(images) + 1))
        return [i["id"] for i in images]

    async def count(self, owner: dict[str, Any], query: str = "") -> int:
        answer = await self.call("GET", f"{self.base(owner)}/images/count.json{query}")
        assert set(answer) == {"count"}
        count: int = answer["count"]
        return count


@pytest.fixture(params=KINDS, ids=[k.owners for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    kind: Kind = request.param
    return kind


@pytest.fixture(params=["id", "handle"])
def by(request: pytest.FixtureRequest) -> str:
    by: str = request.param
    return by


async def open_store(make_client: AppFactory, kind: Kind, by: str, **sections: Any) -> Store:
    client = await make_client([], **sections)
    org = await client.app[STATE].accounts.create_organisation("Shop")
    return Store(client, org.api_key, kind, by)


@pytest.fixture
async def store(make_client: AppFactory, kind: Kind) -> Store:
    """A store for owners addressed by id (the `by` fixture adds handles where it matters)."""
    return await open_store(make_client, kind, "id")


@pytest.fixture
async def store_by(make_client: AppFactory, kind: Kind, by: str) -> Store:
    """A store whose owners are addressed by id and, in a second run, by handle."""
    return await open_store(make_client, kind, by)


def check_image(kind: Kind, image: dict[str, Any], owner: dict[str, Any]) -> None:
    """The image has exactly the SPEC §6 fields, with the right types and owner key."""
    assert set(image) == IMAGE_KEYS | {kind.owner_key}
    assert kind.other_key not in image
    assert image[kind.owner_key] == owner["id"]
    assert isinstance(image["id"], int)
    assert isinstance(image["position"], int) and image["position"] >= 1
    assert isinstance(image["alt"], str)
    assert isinstance(image["filename"], str) and image["filename"]
    assert image["extension"] in ("png", "gif", "jpg")
    assert re.fullmatch(r"[0-9a-f]{32}", image["digest"])
    assert re.fullmatch(
        rf"{re.escape(PUBLIC)}/images/[A-Za-z0-9][A-Za-z0-9._-]*\?{image['digest']}", image["src"]
    )
    assert isinstance(image["variation_ids"], list)


def src_path(image: dict[str, Any]) -> str:
    src: str = image["src"]
    assert src.startswith(PUBLIC + "/images/")
    return src.removeprefix(PUBLIC)


def proxy_id(image: dict[str, Any]) -> str:
    return src_path(image).removeprefix("/images/").split("?")[0]


async def fetch_src(client: TestClient[Any, Any], image: dict[str, Any]) -> pyvips.Image:
    """GET the image's src through the proxy: 200 and a decodable image."""
    response = await client.get(src_path(image))
    assert response.status == 200, await response.text()
    assert response.content_type.startswith("image/")
    return pyvips.Image.new_from_buffer(await response.read(), "")


async def check_served(client: TestClient[Any, Any], image: dict[str, Any]) -> None:
    """The src serves an image at once, and every viewer stage gets built for it."""
    first = await fetch_src(client, image)
    assert first.width > 0
    info = await wait_ready(client, proxy_id(image))
    assert info["status"] == "ready", info
    assert info["stages"] == {"placeholder": True, "display": True, "zoom": True}
    response = await client.get(src_path(image))
    assert response.status == 200
    assert response.headers["X-Image-Stage"] == "display"
    assert pyvips.Image.new_from_buffer(await response.read(), "").width == info["width"]
    dzi = await client.get(info["zoom"]["dzi"].removeprefix(PUBLIC))
    assert dzi.status == 200


async def idle(client: TestClient[Any, Any]) -> None:
    """Wait until no job is queued or running (the background workers are done)."""

    async def check() -> bool:
        health = await (await client.get("/healthz")).json()
        return bool(health["queue"] == 0 and health["workers_busy"] == 0)

    await poll(check, timeout=20)


# -- owners --------------------------------------------------------------------------------


async def test_owner_create_read_list_delete(store: Store, kind: Kind) -> None:
    """An owner is created (201, numeric id), read and deleted by id or handle, and listed."""
    created = await store.create_owner("summer-shoes-2024", "Summer shoes")
    assert set(created) == {"id", "handle", "title"}
    assert isinstance(created["id"], int)
    assert created["handle"] == "summer-shoes-2024"
    assert created["title"] == "Summer shoes"
    other = await store.create_owner("winter")
    assert other["id"] != created["id"]
    for ref in (created["id"], created["handle"]):
        answer = await store.call("GET", f"/api/{kind.owners}/{ref}.json")
        assert answer == {kind.singular: created}
    listed = await store.call("GET", f"/api/{kind.owners}.json")
    assert listed == {kind.owners: [created, other]}
    assert await store.call("DELETE", f"/api/{kind.owners}/{created['handle']}.json") == {}
    assert await store.call("DELETE", f"/api/{kind.owners}/{other['id']}.json") == {}
    for ref in (created["id"], created["handle"], other["id"], other["handle"]):
        await store.call("GET", f"/api/{kind.owners}/{ref}.json", status=404)
        await store.call("DELETE", f"/api/{kind.owners}/{ref}.json", status=404)
    assert await store.call("GET", f"/api/{kind.owners}.json") == {kind.owners: []}


async def test_owner_handle_must_be_lower_case_letters_digits_dashes(
    store: Store, kind: Kind
) -> None:
    """A handle outside [a-z0-9-] (upper case, spaces, other characters) is a 422 naming it."""
    for handle in ("Shoes", "summer shoes", "shoes_2", "shoes.json", "schuhe-größe", "x" * 256):
        body = {kind.singular: {"handle": handle, "title": "t"}}
        answer = await store.call("POST", f"/api/{kind.owners}.json", body, status=422)
        assert "handle" in answer["error"]
    assert await store.call("GET", f"/api/{kind.owners}.json") == {kind.owners: []}
    assert (await store.create_owner("shoes-2-0"))["handle"] == "shoes-2-0"


async def test_owner_duplicate_handle_is_422(store: Store, kind: Kind) -> None:
    """A second owner with a handle already taken is a 422, and the first one is untouched."""
    first = await store.create_owner("dup", "first")
    body = {kind.singular: {"handle": "dup", "title": "second"}}
    answer = await store.call("POST", f"/api/{kind.owners}.json", body, status=422)
    assert "handle" in answer["error"] and "dup" in answer["error"]
    assert await store.call("GET", f"/api/{kind.owners}/dup.json") == {kind.singular: first}


async def test_owner_body_errors_are_400(store: Store, kind: Kind) -> None:
    """An owner body without the kind's object or a string handle is a 400 naming the field."""
    one = kind.singular
    for body in [
        {},
        {"thing": {"handle": "a"}},
        {one: "not an object"},
        {one: {"title": "no handle"}},
        {one: {"handle": 12}},
        {one: {"handle": "ok", "title": 5}},
    ]:
        answer = await store.call("POST", f"/api/{kind.owners}.json", body, status=400)
        assert one in answer["error"], body
    assert await store.call("GET", f"/api/{kind.owners}.json") == {kind.owners: []}


async def test_owner_is_found_only_under_its_own_kind(store: Store, kind: Kind) -> None:
    """An owner of one kind is a 404 under the other kinds' URLs, by id and by handle."""
    owner = await store.create_owner("only-here")
    for other in KINDS:
        if other != kind:
            for ref in (owner["id"], owner["handle"]):
                await store.call("GET", f"/api/{other.owners}/{ref}.json", status=404)
                await store.call("GET", f"/api/{other.owners}/{ref}/images.json", status=404)


# -- images: the seed's examples -----------------------------------------------------------


async def test_seed_examples_walkthrough(store_by: Store, kind: Kind) -> None:
    """The SPEC §6 routes in order: create, list, fields=id,src, count, one image, PUT, DELETE."""
    store = store_by
    owner = await store.create_owner("walk")
    base = store.base(owner)
    first = await store.add(
        owner,
        jpg(1),
        filename="front.jpg",
        alt="Front view",
        position=1,
        variation_ids=[808950810, 808950811],
    )
    check_image(kind, first, owner)
    assert (first["position"], first["filename"], first["extension"]) == (1, "front.jpg", "jpg")
    assert (first["alt"], first["variation_ids"]) == ("Front view", [808950810, 808950811])
    second = await store.add(owner, png(2), filename="side.png")
    check_image(kind, second, owner)
    assert (second["position"], second["alt"], second["variation_ids"]) == (2, "", [])
    third = await store.add(owner, gif(3), filename="back.gif")
    assert (third["position"], third["extension"]) == (3, "gif")

    listed = await store.images(owner)
    assert listed == [first, second, third]
    for image in listed:
        assert (await fetch_src(store.client, image)).width > 0
    slim = await store.images(owner, "?fields=id,src")
    assert slim == [{"id": i["id"], "src": i["src"]} for i in listed]
    assert await store.count(owner) == 3
    assert await store.count(owner, f"?since_id={first['id']}") == 2
    assert await store.images(owner, f"?since_id={first['id']}") == [second, third]

    one = await store.call("GET", f"{base}/images/{second['id']}.json")
    assert one == {"image": second}
    picked = await store.call("GET", f"{base}/images/{second['id']}.json?fields=id,position")
    assert picked == {"image": {"id": second["id"], "position": 2}}
    owner_field = await store.call(
        "GET", f"{base}/images/{second['id']}.json?fields={kind.owner_key}"
    )
    assert owner_field == {"image": {kind.owner_key: owner["id"]}}

    body = {"image": {"id": third["id"], "alt": "Back view", "position": 1}}
    updated = await store.call("PUT", f"{base}/images/{third['id']}.json", body)
    assert updated == {"image": {**third, "alt": "Back view", "position": 1}}
    assert await store.order(owner) == [third["id"], first["id"], second["id"]]

    assert await store.call("DELETE", f"{base}/images/{first['id']}.json") == {}
    assert await store.order(owner) == [third["id"], second["id"]]
    assert await store.count(owner) == 2
    await store.call("GET", f"{base}/images/{first['id']}.json", status=404)
    for image in (second, {**third, "alt": "Back view", "position": 1}):
        await check_served(store.client, image)


async def test_every_returned_src_is_a_served_image(store: Store, kind: Kind) -> None:
    """Each src (jpg, png, gif) is absolute, carries the digest, and serves all viewer stages."""
    owner = await store.create_owner("served")
    images = [
        await store.add(owner, jpg(4, 60, 40), filename="a.jpg"),
        await store.add(owner, make_image(50, 30, "png", alpha=True), filename="b.png"),
        await store.add(owner, gif(5), filename="c.gif"),
    ]
    assert len({proxy_id(i) for i in images}) == 3
    for image in images:
        check_image(kind, image, owner)
        await check_served(store.client, image)
    info = await (await store.client.get(f"/images/{proxy_id(images[0])}/info.json")).json()
    assert (info["width"], info["height"]) == (60, 40)


# -- content rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "filename", "extension"),
    [
        (png(), "photo.jpg", "png"),
        (jpg(), "picture.png", "jpg"),
        (gif(), "anim.jpeg", "gif"),
        (png(), "no-extension", "png"),
        (make_image(16, 16, "jpg", Q=40), "x.JPG", "jpg"),
    ],
)
async def test_format_is_judged_by_content_not_name(
    store: Store, kind: Kind, data: bytes, filename: str, extension: str
) -> None:
    """The extension reflects the decoded format, whatever the file name says."""
    owner = await store.create_owner("formats")
    image = await store.add(owner, data, filename=filename)
    assert (image["filename"], image["extension"]) == (filename, extension)
    fetched = await fetch_src(store.client, image)
    assert fetched.width == pyvips.Image.new_from_buffer(data, "").width


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (make_image(16, 16, "webp"), "webp"),
        (make_image(16, 16, "tif"), "tiff"),
        (b"just some text, not an image\n", "not an accepted image"),
        (b"", "not an accepted image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an accepted image"),
    ],
    ids=["webp", "tiff", "text", "empty", "png-signature-only"],
)
async def test_disallowed_or_undecodable_attachment_is_422(
    store: Store, kind: Kind, data: bytes, reason: str
) -> None:
    """webp, tiff, text, zero bytes and garbage are refused with a 422 giving the reason."""
    owner = await store.create_owner("refused")
    answer = await store.add(owner, data, status=422, filename="photo.jpg")
    assert reason in answer["error"]
    assert await store.count(owner) == 0
    uploads = store.client.app[STATE].settings.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


@pytest.mark.parametrize("fmt", ["jpg", "png"])
async def test_truncated_attachment_is_422(store: Store, kind: Kind, fmt: str) -> None:
    """An attachment whose header is intact but whose data is cut off is undecodable: 422."""
    owner = await store.create_owner("truncated")
    data = make_image(200, 150, fmt)
    answer = await store.add(owner, data[: len(data) // 2], status=422, filename=f"cut.{fmt}")
    assert "image" in answer["error"]


async def test_attachment_not_base64_is_422(store: Store, kind: Kind) -> None:
    """An attachment that is not base64 is refused with a 422 saying so."""
    owner = await store.create_owner("b64")
    answer = await store.add(owner, status=422, attachment="not base64 at all!")
    assert "base64" in answer["error"]


async def test_digest_is_md5_hex_of_name_contents_and_creation_time(
    store: Store, kind: Kind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """digest: 32 hex digits, stable across reads, new for the same bytes uploaded again."""
    owner = await store.create_owner("digests")
    data = jpg(7)
    one = await store.add(owner, data, filename="same.jpg")
    two = await store.add(owner, data, filename="same.jpg")
    assert re.fullmatch(r"[0-9a-f]{32}", one["digest"])
    assert one["digest"] != two["digest"]  # the creation time differs
    assert one["digest"] != hashlib.md5(b"same.jpg" + data).hexdigest()  # time is part of it
    for image in (one, two):
        assert image["src"].endswith(f"?{image['digest']}")
        for _ in range(2):
            again = await store.call("GET", f"{store.base(owner)}/images/{image['id']}.json")
            assert again["image"]["digest"] == image["digest"]
            assert again["image"]["src"] == image["src"]
    # With the clock stopped, the digest depends on the file name and on the contents.
    monkeypatch.setattr(store_api, "time", SimpleNamespace(time=lambda: 1_700_000_000.25))
    frozen = [
        await store.add(owner, data, filename="same.jpg"),
        await store.add(owner, data, filename="same.jpg"),
        await store.add(owner, data, filename="other.jpg"),
        await store.add(owner, jpg(8), filename="same.jpg"),
    ]
    digests = [i["digest"] for i in frozen]
    assert digests[0] == digests[1]
    assert len({digests[0], digests[2], digests[3]}) == 3
    monkeypatch.setattr(store_api, "time", SimpleNamespace(time=lambda: 1_700_000_001.25))
    later = await store.add(owner, data, filename="same.jpg")
    assert later["digest"] != digests[0]


# -- images from src -----------------------------------------------------------------------


async def test_src_is_fetched_and_named_after_its_last_segment(
    store_by: Store, kind: Kind, origin_server: FakeOrigin
) -> None:
    """A src URL is fetched once; filename defaults to its last segment; the image is served."""
    store = store_by
    origin_server.files["red shoe.png"] = make_image(40, 30, "png")
    origin_server.files["blue.jpg"] = jpg(9)
    owner = await store.create_owner("from-src")
    image = await store.add(owner, src=origin_server.url + "red%20shoe.png", alt="Red")
    check_image(kind, image, owner)
    assert (image["filename"], image["extension"], image["alt"]) == ("red shoe.png", "png", "Red")
    assert origin_server.hits["red shoe.png"] == 1
    named = await store.add(owner, src=origin_server.url + "blue.jpg?v=2", filename="main.jpg")
    assert (named["filename"], named["extension"], named["position"]) == ("main.jpg", "jpg", 2)
    await check_served(store.client, image)
    await check_served(store.client, named)
    assert origin_server.hits == {"red shoe.png": 1, "blue.jpg": 1}  # kept bytes are served


@pytest.mark.parametrize(
    ("name", "mode", "body", "reason"),
    [
        ("missing.jpg", "ok", None, "404"),
        ("broken.jpg", "500", b"", "could not be fetched"),
        ("forbidden.jpg", "403", b"", "could not be fetched"),
        ("page.jpg", "ok", b"<html>not an image</html>", "not an accepted image"),
        ("modern.jpg", "ok", make_image(16, 16, "webp"), "webp"),
    ],
)
async def test_src_that_fails_is_422_with_the_reason(
    store: Store,
    kind: Kind,
    origin_server: FakeOrigin,
    name: str,
    mode: str,
    body: bytes | None,
    reason: str,
) -> None:
    """A src answering 404, 500 or 403, or serving a non-image or a webp, is a 422 saying why."""
    if body is not None:
        origin_server.files[name] = body
    origin_server.modes[name] = mode
    owner = await store.create_owner("bad-src")
    answer = await store.add(owner, status=422, src=origin_server.url + name)
    assert reason in answer["error"]
    assert "src" in answer["error"] or "image" in answer["error"]
    assert await store.count(owner) == 0


async def test_src_must_be_http_or_https(store: Store, kind: Kind) -> None:
    """A src with another scheme (file://, ftp://, none) is a 400 naming image.src."""
    owner = await store.create_owner("schemes")
    for src in ("file:///etc/passwd", "ftp://example.com/a.jpg", "javascript:alert(1)", "/a.jpg"):
        answer = await store.add(owner, status=400, src=src)
        assert "image.src" in answer["error"], src
    assert await store.count(owner) == 0


async def test_src_goes_through_the_address_policy(
    make_client: AppFactory, kind: Kind, origin_server: FakeOrigin
) -> None:
    """With private networks not allowed, a loopback src is refused (422) and never contacted."""
    store = await open_store(make_client, kind, "id", limits={"allow_private_networks": False})
    origin_server.files["a.jpg"] = jpg()
    owner = await store.create_owner("policy")
    answer = await store.add(owner, status=422, src=origin_server.url + "a.jpg")
    assert "src" in answer["error"]
    assert origin_server.total_hits() == 0


async def test_upload_size_limit(
    make_client: AppFactory, kind: Kind, origin_server: FakeOrigin
) -> None:
    """An attachment or a src over limits.max_upload_bytes is a 422."""
    store = await open_store(make_client, kind, "id", limits={"max_upload_bytes": 4000})
    big = make_image(300, 300, "png")
    assert len(big) > 4000
    origin_server.files["big.png"] = big
    owner = await store.create_owner("limits")
    answer = await store.add(owner, big, status=422)
    assert "4000" in answer["error"]
    answer = await store.add(owner, status=422, src=origin_server.url + "big.png")
    assert "src" in answer["error"]
    small = await store.add(owner, jpg())
    assert small["position"] == 1


# -- positions -----------------------------------------------------------------------------


async def test_create_at_a_position_shifts_later_images(store_by: Store, kind: Kind) -> None:
    """A new image at position p moves p..n down by one; past n+1 it is appended; 1 is main."""
    store = store_by
    owner = await store.create_owner("positions")
    a = await store.add(owner, jpg(1))
    b = await store.add(owner, jpg(2))
    assert (a["position"], b["position"]) == (1, 2)
    c = await store.add(owner, jpg(3), position=1)
    assert c["position"] == 1
    assert await store.order(owner) == [c["id"], a["id"], b["id"]]
    d = await store.add(owner, jpg(4), position=2)
    assert await store.order(owner) == [c["id"], d["id"], a["id"], b["id"]]
    e = await store.add(owner, jpg(5), position=5)  # exactly n+1
    f = await store.add(owner, jpg(6), position=99)  # past n+1: n+1
    assert (e["position"], f["position"]) == (5, 6)
    assert await store.order(owner) == [c["id"], d["id"], a["id"], b["id"], e["id"], f["id"]]
    main = (await store.images(owner, "?limit=1"))[0]
    assert main["id"] == c["id"] and main["position"] == 1


async def test_put_moves_an_image_up_and_down(store_by: Store, kind: Kind) -> None:
    """PUT position moves an image; the others close up or make room; positions stay 1..n."""
    store = store_by
    owner = await store.create_owner("moves")
    ids = [(await store.add(owner, jpg(i)))["id"] for i in range(4)]
    url = f"{store.base(owner)}/images/{{}}.json"

    async def move(image_id: int, position: int) -> dict[str, Any]:
        body = {"image": {"id": image_id, "position": position}}
        answer: dict[str, Any] = (await store.call("PUT", url.format(image_id), body))["image"]
        return answer

    assert (await move(ids[0], 3))["position"] == 3  # down
    assert await store.order(owner) == [ids[1], ids[2], ids[0], ids[3]]
    assert (await move(ids[3], 1))["position"] == 1  # up, becomes the main image
    assert await store.order(owner) == [ids[3], ids[1], ids[2], ids[0]]
    assert (await move(ids[1], 99))["position"] == 4  # past the end: last
    assert await store.order(owner) == [ids[3], ids[2], ids[0], ids[1]]
    assert (await move(ids[2], 2))["position"] == 2  # where it already is
    assert await store.order(owner) == [ids[3], ids[2], ids[0], ids[1]]
    body = {"image": {"id": ids[0], "alt": "only the alt"}}
    answer = await store.call("PUT", url.format(ids[0]), body)
    assert (answer["image"]["alt"], answer["image"]["position"]) == ("only the alt", 3)
    assert await store.order(owner) == [ids[3], ids[2], ids[0], ids[1]]


async def test_delete_closes_the_gap(store_by: Store, kind: Kind) -> None:
    """DELETE answers {} and the later images move up; deleting the first promotes the second."""
    store = store_by
    owner = await store.create_owner("gaps")
    ids = [(await store.add(owner, jpg(i)))["id"] for i in range(4)]
    url = f"{store.base(owner)}/images/{{}}.json"
    assert await store.call("DELETE", url.format(ids[1])) == {}
    assert await store.order(owner) == [ids[0], ids[2], ids[3]]
    assert await store.call("DELETE", url.format(ids[0])) == {}
    assert await store.order(owner) == [ids[2], ids[3]]
    assert (await store.call("GET", url.format(ids[2])))["image"]["position"] == 1
    await store.call("DELETE", url.format(ids[0]), status=404)
    new = await store.add(owner, jpg(9))
    assert new["position"] == 3


async def test_concurrent_creates_never_share_a_position(store: Store, kind: Kind) -> None:
    """15 simultaneous creates on one owner (some at position 1) end as positions 1..15."""
    owner = await store.create_owner("rush")

    async def one(i: int) -> dict[str, Any]:
        extra = {"position": 1} if i % 3 == 0 else {}
        return await store.add(owner, jpg(i), filename=f"{i}.jpg", **extra)

    created = await asyncio.gather(*(one(i) for i in range(15)))
    assert len({i["id"] for i in created}) == 15
    assert len({i["digest"] for i in created}) == 15
    order = await store.order(owner)
    assert sorted(order) == sorted(i["id"] for i in created)
    assert await store.count(owner) == 15


# -- listing parameters --------------------------------------------------------------------


async def test_limit_page_and_since_id(store_by: Store, kind: Kind) -> None:
    """limit defaults to 30 (at most 50), pages count from 1, a page past the end is empty."""
    store = store_by
    owner = await store.create_owner("pages")
    data = make_image(8, 8, "gif")
    ids = [(await store.add(owner, data, filename=f"{i}.gif"))["id"] for i in range(32)]
    assert [i["id"] for i in await store.images(owner)] == ids[:30]
    assert [i["id"] for i in await store.images(owner, "?page=2")] == ids[30:]
    assert [i["id"] for i in await store.images(owner, "?limit=50")] == ids
    assert [i["id"] for i in await store.images(owner, "?limit=1")] == ids[:1]
    pages = [await store.images(owner, f"?limit=10&page={p}") for p in range(1, 5)]
    assert [len(p) for p in pages] == [10, 10, 10, 2]
    assert [i["id"] for p in pages for i in p] == ids
    assert await store.images(owner, "?limit=10&page=5") == []
    assert await store.images(owner, "?page=999") == []
    assert [i["id"] for i in await store.images(owner, f"?since_id={ids[29]}")] == ids[30:]
    assert await store.images(owner, f"?since_id={ids[-1]}") == []
    assert await store.count(owner) == 32
    assert await store.count(owner, f"?since_id={ids[9]}") == 22
    assert await store.count(owner, f"?since_id={ids[-1]}") == 0
    assert await store.count(owner, "?since_id=0") == 32
    # since_id is about ids, the order stays by position
    body = {"image": {"id": ids[31], "position": 1}}
    await store.call("PUT", f"{store.base(owner)}/images/{ids[31]}.json", body)
    since = await store.images(owner, f"?since_id={ids[29]}&fields=id,position")
    assert since == [{"id": ids[31], "position": 1}, {"id": ids[30], "position": 32}]


BAD_PARAMETERS = [
    ("/images.json", "limit=51", "limit"),
    ("/images.json", "limit=0", "limit"),
    ("/images.json", "limit=-1", "limit"),
    ("/images.json", "limit=ten", "limit"),
    ("/images.json", "page=0", "page"),
    ("/images.json", "page=-2", "page"),
    ("/images.json", "page=1.5", "page"),
    ("/images.json", "since_id=abc", "since_id"),
    ("/images.json", "since_id=-5", "since_id"),
    ("/images.json", "fields=id,colour", "fields"),
    ("/images.json", "fields=OTHER", "fields"),
    ("/images.json", "fields=,", "fields"),
    ("/images/count.json", "since_id=abc", "since_id"),
    ("/images/count.json", "since_id=1e3", "since_id"),
    ("/images/IMAGE.json", "fields=id,nope", "fields"),
    ("/images/IMAGE.json", "fields=OTHER", "fields"),
    ("/images/abc.json", "", "image id"),
    ("/images/-1.json", "", "image id"),
]


async def test_bad_parameters_are_400_naming_them(store_by: Store, kind: Kind) -> None:
    """Out-of-range or non-numeric limit/page/since_id/ids and unknown fields are 400s naming them."""
    store = store_by
    owner = await store.create_owner("params")
    image = await store.add(owner, jpg())
    for suffix, query, name in BAD_PARAMETERS:
        suffix = suffix.replace("IMAGE", str(image["id"]))
        query = query.replace("OTHER", kind.other_key)
        answer = await store.call("GET", f"{store.base(owner)}{suffix}?{query}", status=400)
        assert name in answer["error"], (suffix, query, answer)
    assert await store.images(owner, "?limit=50&page=1&since_id=0") == [image]


# -- errors --------------------------------------------------------------------------------


async def test_missing_or_wrong_key_is_401_on_every_route(store: Store, kind: Kind) -> None:
    """Every store route answers 401 without a key, with a wrong one, and before any 404."""
    owner = await store.create_owner("locked")
    image = await store.add(owner, jpg())
    o, i = f"/api/{kind.owners}/{owner['id']}", image["id"]
    routes = [
        ("POST", f"/api/{kind.owners}.json", {kind.singular: {"handle": "new"}}),
        ("GET", f"/api/{kind.owners}.json", None),
        ("GET", f"{o}.json", None),
        ("DELETE", f"{o}.json", None),
        ("GET", f"{o}/images.json", None),
        ("GET", f"{o}/images/count.json", None),
        ("POST", f"{o}/images.json", {"image": {"attachment": b64(jpg())}}),
        ("GET", f"{o}/images/{i}.json", None),
        ("PUT", f"{o}/images/{i}.json", {"image": {"id": i, "alt": "x"}}),
        ("DELETE", f"{o}/images/{i}.json", None),
        ("GET", f"/api/{kind.owners}/nobody/images/1.json", None),
    ]
    org_id = store.key.partition(".")[0]
    # Each route with one of the wrong keys: few enough failures to stay below the 429 limit.
    keys = ["", "wrong", f"{org_id}.wrong-secret", f"{org_id}.", store.key + "x"]
    for n, (method, path, body) in enumerate(routes):
        answer = await store.call(method, path, body, status=401, key=keys[n % len(keys)])
        assert answer == {"error": "invalid api key"}
    response = await store.client.get(f"/api/{kind.owners}.json")  # no header at all
    assert response.status == 401
    assert await store.order(owner) == [i]
    assert await store.call("GET", f"/api/{kind.owners}.json") == {kind.owners: [owner]}


async def test_another_organisation_cannot_see_or_touch_owners(store_by: Store, kind: Kind) -> None:
    """With organisation B's key, A's owners and images are 404s on every route and stay intact."""
    store = store_by
    owner = await store.create_owner("private")
    image = await store.add(owner, jpg())
    other = await store.client.app[STATE].accounts.create_organisation("Other")
    b = Store(store.client, other.api_key, kind, store.by)
    o, i = store.base(owner), image["id"]
    for method, path, body in [
        ("GET", f"{o}.json", None),
        ("DELETE", f"{o}.json", None),
        ("GET", f"{o}/images.json", None),
        ("GET", f"{o}/images/count.json", None),
        ("POST", f"{o}/images.json", {"image": {"attachment": b64(jpg())}}),
        ("GET", f"{o}/images/{i}.json", None),
        ("PUT", f"{o}/images/{i}.json", {"image": {"id": i, "alt": "x"}}),
        ("DELETE", f"{o}/images/{i}.json", None),
    ]:
        await b.call(method, path, body, status=404)
    assert await b.call("GET", f"/api/{kind.owners}.json") == {kind.owners: []}
    assert await store.call("GET", f"{o}/images/{i}.json") == {"image": image}


async def test_unknown_owner_or_image_is_404(store_by: Store, kind: Kind) -> None:
    """Unknown owners, unknown image ids and another owner's images are 404s."""
    store = store_by
    owner = await store.create_owner("known")
    sibling = await store.create_owner("sibling")
    theirs = await store.add(sibling, jpg())
    mine = await store.add(owner, jpg())
    for ref in ("unknown-handle", "987654321"):
        base = f"/api/{kind.owners}/{ref}"
        await store.call("GET", f"{base}.json", status=404)
        await store.call("GET", f"{base}/images.json", status=404)
        await store.call("GET", f"{base}/images/count.json", status=404)
        await store.call("POST", f"{base}/images.json", {"image": {"attachment": b64(jpg())}}, 404)
        await store.call("GET", f"{base}/images/{mine['id']}.json", status=404)
    base = store.base(owner)
    for image_id in (theirs["id"], mine["id"] + 1000):
        url = f"{base}/images/{image_id}.json"
        await store.call("GET", url, status=404)
        await store.call("PUT", url, {"image": {"id": image_id, "alt": "x"}}, status=404)
        await store.call("DELETE", url, status=404)
    assert await store.order(sibling) == [theirs["id"]]


async def test_put_changing_anything_but_alt_and_position_is_422(
    store_by: Store, kind: Kind
) -> None:
    """PUT may change alt and position only; another field is a 422 naming it, nothing changes."""
    store = store_by
    owner = await store.create_owner("frozen")
    image = await store.add(owner, jpg(), filename="orig.jpg", variation_ids=[7])
    url = f"{store.base(owner)}/images/{image['id']}.json"
    for change, named in [
        ({"filename": "renamed.jpg"}, "filename"),
        ({"extension": "png"}, "extension"),
        ({"src": "http://elsewhere.test/x.jpg"}, "src"),
        ({"attachment": "AAAA"}, "attachment"),
        ({"digest": "0" * 32}, "digest"),
        ({"variation_ids": [1]}, "variation_ids"),
        ({kind.owner_key: owner["id"] + 1000}, kind.owner_key),
        ({kind.other_key: owner["id"]}, kind.other_key),
        ({"colour": "red", "alt": "fine", "position": 1}, "colour"),
    ]:
        body = {"image": {"id": image["id"], **change}}
        answer = await store.call("PUT", url, body, status=422)
        assert "only alt and position" in answer["error"], change
        assert named in answer["error"], change
    assert await store.call("GET", url) == {"image": image}


async def test_put_accepts_the_image_echoed_back(store_by: Store, kind: Kind) -> None:
    """A PUT of the whole image as read, with a new alt and position, changes just those two."""
    store = store_by
    owner = await store.create_owner("echo")
    first = await store.add(owner, jpg(1))
    second = await store.add(owner, png(2), variation_ids=[3, 4])
    url = f"{store.base(owner)}/images/{second['id']}.json"
    body = {"image": {**second, "alt": "New alt", "position": 1}}
    answer = await store.call("PUT", url, body)
    assert answer == {"image": {**second, "alt": "New alt", "position": 1}}
    assert await store.order(owner) == [second["id"], first["id"]]


async def test_put_id_must_match_the_url(store_by: Store, kind: Kind) -> None:
    """A PUT whose image.id differs from the URL's is a 422; without image.id it is a 400."""
    store = store_by
    owner = await store.create_owner("ids")
    a = await store.add(owner, jpg(1))
    b = await store.add(owner, jpg(2))
    url = f"{store.base(owner)}/images/{a['id']}.json"
    answer = await store.call("PUT", url, {"image": {"id": b["id"], "alt": "x"}}, status=422)
    assert "id" in answer["error"]
    await store.call("PUT", url, {"image": {"id": str(a["id"]), "alt": "x"}}, status=422)
    answer = await store.call("PUT", url, {"image": {"alt": "x"}}, status=400)
    assert "image.id" in answer["error"]
    assert await store.images(owner) == [a, b]


MALFORMED_BODIES = [
    ("POST", b"{not json", "malformed JSON"),
    ("POST", b"", "JSON object"),
    ("POST", b"[1, 2]", "JSON object"),
    ("POST", b'{"image": "x"}', "image"),
    ("POST", b'{"picture": {}}', "image"),
    ("POST", b'{"image": {}}', "src"),
    ("POST", b'{"image": {"src": "http://a.test/x.jpg", "attachment": "AAAA"}}', "src"),
    ("POST", b'{"image": {"attachment": 5}}', "attachment"),
    ("POST", b'{"image": {"attachment": "AAAA", "position": 0}}', "position"),
    ("POST", b'{"image": {"attachment": "AAAA", "position": "2"}}', "position"),
    ("POST", b'{"image": {"attachment": "AAAA", "alt": 3}}', "alt"),
    ("POST", b'{"image": {"attachment": "AAAA", "filename": ""}}', "filename"),
    ("POST", b'{"image": {"attachment": "AAAA", "variation_ids": ["a"]}}', "variation_ids"),
    ("PUT", b'{"image": {"id": 1', "malformed JSON"),
    ("PUT", b"null", "JSON object"),
    ("PUT", b'{"image": [1]}', "image"),
    ("PUT", b'{"image": {"id": ID, "position": 0}}', "position"),
    ("PUT", b'{"image": {"id": ID, "alt": false}}', "alt"),
]


async def test_malformed_bodies_are_400(store_by: Store, kind: Kind) -> None:
    """Malformed JSON and ill-typed members are 400s naming the problem; nothing is changed."""
    store = store_by
    owner = await store.create_owner("bodies")
    image = await store.add(owner, jpg())
    for method, raw, named in MALFORMED_BODIES:
        path = f"{store.base(owner)}/images.json"
        if method == "PUT":
            path = f"{store.base(owner)}/images/{image['id']}.json"
            raw = raw.replace(b"ID", str(image["id"]).encode())
        answer = await store.call(method, path, raw=raw, status=400)
        assert named in answer["error"], (raw, answer)
    assert await store.images(owner) == [image]


async def test_malformed_owner_body_is_400(store: Store, kind: Kind) -> None:
    """Malformed JSON on owner creation is a 400."""
    answer = await store.call("POST", f"/api/{kind.owners}.json", raw=b"{oops", status=400)
    assert "malformed JSON" in answer["error"]


# -- deletion and the served images --------------------------------------------------------


async def test_deleting_an_owner_removes_its_images(store_by: Store, kind: Kind) -> None:
    """DELETE of an owner removes its images: their srcs 404 and their files leave the disk."""
    store = store_by
    state = store.client.app[STATE]
    owner = await store.create_owner("gone")
    keep_owner = await store.create_owner("kept")
    images = [await store.add(owner, jpg(1)), await store.add(owner, png(2))]
    kept = await store.add(keep_owner, gif(3))
    await wait_ready(store.client, proxy_id(images[0]))
    await fetch_src(store.client, images[1])
    assert state.layout.image_dir(proxy_id(images[0])).exists()
    assert await store.call("DELETE", f"{store.base(owner)}.json") == {}
    await store.call("GET", f"{store.base(owner)}/images.json", status=404)
    for ref in (owner["id"], owner["handle"]):
        await store.call("GET", f"/api/{kind.owners}/{ref}.json", status=404)
    await idle(store.client)
    for image in images:
        assert (await store.client.get(src_path(image))).status == 404
        assert (await store.client.get(f"/images/{proxy_id(image)}/info.json")).status == 404
        assert not state.layout.image_dir(proxy_id(image)).exists()
        assert not (state.settings.data_dir / "uploads" / proxy_id(image)).exists()
    assert await store.order(keep_owner) == [kept["id"]]
    await check_served(store.client, kept)
    again = await store.create_owner("gone")  # the handle is free again
    assert again["id"] != owner["id"]
    assert await store.count(again) == 0


async def test_deleted_image_is_gone_even_while_being_processed(store: Store, kind: Kind) -> None:
    """An image deleted right after creation stays gone: its job stops and leaves no files."""
    state = store.client.app[STATE]
    owner = await store.create_owner("quick")
    image = await store.add(owner, make_image(900, 700, "jpg"))
    url = f"{store.base(owner)}/images/{image['id']}.json"
    assert await store.call("DELETE", url) == {}
    await idle(store.client)
    assert (await store.client.get(src_path(image))).status == 404
    assert (await store.client.get(f"/images/{proxy_id(image)}/info.json")).status == 404
    assert not state.layout.image_dir(proxy_id(image)).exists()
    assert not (state.settings.data_dir / "uploads" / proxy_id(image)).exists()
    assert await store.count(owner) == 0


# -- consistency ---------------------------------------------------------------------------


async def test_a_created_owner_is_readable_at_once_while_other_reads_are_in_flight(
    store: Store, kind: Kind, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a 201, the next GET finds the owner even while another request is mid-read."""
    reader = store.client.app[STATE].store.reader
    await store.create_owner("already-there")  # so that the paused listing has a row
    paused, release = asyncio.Event(), asyncio.Event()
    fetchall = aiosqlite.Cursor.fetchall

    async def pausing_fetchall(cursor: aiosqlite.Cursor) -> Any:
        # Another request's read, stopped between its execute and its fetch.
        if cursor._conn is reader and not paused.is_set():
            paused.set()
            await release.wait()
        return await fetchall(cursor)

    monkeypatch.setattr(aiosqlite.Cursor, "fetchall", pausing_fetchall)
    listing = asyncio.create_task(store.call("GET", f"/api/{kind.owners}.json"))
    waiting = asyncio.create_task(paused.wait())
    await asyncio.wait({listing, waiting}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    try:
        owner = await store.create_owner("fresh")
        for ref in (owner["id"], owner["handle"]):
            answer = await store.call("GET", f"/api/{kind.owners}/{ref}.json")
            assert answer == {kind.singular: owner}
        image = await store.add(owner, jpg())
        assert await store.images(owner) == [image]
    finally:
        release.set()
        waiting.cancel()
        await listing


async def test_create_racing_with_owner_delete_leaves_no_orphan(
    store: Store, kind: Kind, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    """An image whose owner is deleted while its src is being fetched is not created (404)."""
    arrived, gate = asyncio.Event(), asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.set()
        await gate.wait()
        return web.Response(body=jpg(), content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/held.jpg", held)
    server = await aiohttp_server(app, host="127.0.0.1")
    state = store.client.app[STATE]
    owner = await store.create_owner("racing")
    body = {"image": {"src": f"http://127.0.0.1:{server.port}/held.jpg"}}
    create = asyncio.create_task(
        store.client.post(
            f"{store.base(owner)}/images.json", json=body, headers={"x-api-key": store.key}
        )
    )
    await asyncio.wait_for(arrived.wait(), timeout=10)
    assert await store.call("DELETE", f"{store.base(owner)}.json") == {}
    gate.set()
    response = await create
    assert response.status == 404, await response.text()
    assert await state.store.fetchone("SELECT COUNT(*) FROM store_images") == (0,)
    uploads = state.settings.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
