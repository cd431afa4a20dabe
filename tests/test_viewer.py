"""The viewer API end to end (SPEC §3): the real app, real origins on loopback, real images."""

from __future__ import annotations

import asyncio
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import pyvips

from imgproxy.state import STATE
from tests.conftest import (
    AppFactory,
    FakeOrigin,
    file_origin,
    http_origin,
    make_image,
    poll,
    wait_ready,
)

DZ_NS = "{http://schemas.microsoft.com/deepzoom/2008}"


def decode(data: bytes) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(data, "")


async def test_cold_view_gets_placeholder_then_display(
    make_client: AppFactory, originals: Path
) -> None:
    """A cold ID answers with the placeholder (no-store), and later with a display rendition."""
    (originals / "cold").write_bytes(make_image(1600, 1200))
    client = await make_client([file_origin(originals)])
    first = await client.get("/images/cold?w=300")
    assert first.status == 200
    body = await first.read()
    if first.headers["X-Image-Stage"] == "placeholder":
        assert first.headers["Cache-Control"] == "no-store"
        placeholder = await (await client.get("/images/cold/placeholder.jpg")).read()
        assert body == placeholder
        assert len(body) <= 2048
        assert decode(body).width == 32
    await wait_ready(client, "cold")
    later = await client.get("/images/cold?w=300")
    assert later.status == 200
    assert later.headers["X-Image-Stage"] == "display"
    assert later.headers["Vary"] == "Accept"
    assert later.headers["Cache-Control"].startswith("public, max-age=")
    assert decode(await later.read()).width == 320


async def test_display_opens_with_the_default_width_and_every_width_is_usable(
    make_client: AppFactory, originals: Path
) -> None:
    """A viewer waits: the display stage is announced once the default width (1280) is built,
    and from that moment every width and format answers at once (missing ones built on request),
    by `?w=` and by versioned URL, while the image goes on to `ready` with every file on disk."""
    (originals / "wide").write_bytes(make_image(3000, 2000))
    client = await make_client(
        [file_origin(originals)],
        viewer={"default_width": 1280},
        processing={"widths": [320, 640, 960, 1280, 1920, 2560]},
    )
    assert (await client.get("/images/wide")).status == 200

    async def display() -> dict[str, Any] | None:
        info: dict[str, Any] = await (await client.get("/images/wide/info.json")).json()
        return info if info["stages"]["display"] else None

    info = await poll(display, interval=0.005)
    widths = info["renditions"]["widths"]
    assert widths == [320, 640, 960, 1280, 1920, 2560]
    default = await client.get("/images/wide", headers={"Accept": "image/webp"})
    assert default.headers["X-Image-Stage"] == "display"
    assert decode(await default.read()).width == 1280
    for width in widths:
        for fmt in info["renditions"]["formats"]:
            response = await client.get(f"/images/wide/v1/{width}.{fmt}")
            assert response.status == 200, (width, fmt)
            assert decode(await response.read()).width == width
        by_query = await client.get(f"/images/wide?w={width}")
        assert by_query.headers["X-Image-Stage"] == "display"
        assert decode(await by_query.read()).width == width
    assert (await wait_ready(client, "wide"))["status"] == "ready"


async def test_info_json_shape_and_absolute_urls(make_client: AppFactory, originals: Path) -> None:
    """info.json carries every field of SPEC §3 with URLs built from server.public_url."""
    (originals / "pic").write_bytes(make_image(1000, 500))
    client = await make_client([file_origin(originals)])
    info = await wait_ready(client, "pic")
    assert info["id"] == "pic"
    assert info["status"] == "ready"
    assert "error" not in info
    assert info["version"] == 1
    assert (info["width"], info["height"]) == (1000, 500)
    assert info["stages"] == {"placeholder": True, "display": True, "zoom": True}
    assert info["placeholder"] == "http://proxy.test/images/pic/placeholder.jpg"
    assert info["renditions"] == {
        "widths": [320, 640, 960, 1000],
        "formats": ["webp", "jpg"],
        "url": "http://proxy.test/images/pic/v1/{width}.{format}",
    }
    assert info["zoom"] == {"dzi": "http://proxy.test/images/pic/v1/zoom.dzi"}
    for width in info["renditions"]["widths"]:
        for fmt in info["renditions"]["formats"]:
            response = await client.get(f"/images/pic/v1/{width}.{fmt}")
            assert response.status == 200
            assert decode(await response.read()).width == width


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("w=300", 320),
        ("w=300&dpr=2", 640),
        ("w=320", 320),
        ("w=321", 640),
        ("w=500&dpr=1.5", 960),
        ("w=5000", 1280),
        ("", 1280),  # no w: viewer.default_width (1280)
    ],
)
async def test_width_choice(
    make_client: AppFactory, originals: Path, query: str, expected: int
) -> None:
    """The smallest rendition >= w*dpr is chosen, else the largest."""
    (originals / "wide").write_bytes(make_image(2000, 1000))
    client = await make_client([file_origin(originals)])
    await wait_ready(client, "wide")
    response = await client.get(f"/images/wide?{query}")
    assert response.status == 200
    assert decode(await response.read()).width == expected


@pytest.mark.parametrize(
    ("accept", "alpha", "content_type"),
    [
        ("image/avif,image/webp,*/*", False, "image/avif"),
        ("image/webp,*/*", False, "image/webp"),
        ("image/webp;q=0,*/*", False, "image/jpeg"),
        ("*/*", False, "image/jpeg"),
        (None, False, "image/jpeg"),
        ("*/*", True, "image/png"),
        ("image/webp", True, "image/webp"),
    ],
)
async def test_format_negotiation(
    make_client: AppFactory,
    originals: Path,
    accept: str | None,
    alpha: bool,
    content_type: str,
) -> None:
    """Accept picks avif, then webp, then jpg; an original with alpha gets png instead of jpg."""
    (originals / "img").write_bytes(make_image(700, 400, fmt="png", alpha=alpha))
    client = await make_client(
        [file_origin(originals)], processing={"formats": ["avif", "webp", "jpg"]}
    )
    await wait_ready(client, "img")
    headers = {"Accept": accept} if accept else {}
    response = await client.get("/images/img?w=320", headers=headers)
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    image = decode(await response.read())
    assert image.width == 320
    if content_type in ("image/png", "image/webp") and alpha:
        assert image.hasalpha()


async def test_etag_and_not_modified(make_client: AppFactory, originals: Path) -> None:
    """A display rendition has an ETag; If-None-Match with it answers 304 with the cache headers."""
    (originals / "e").write_bytes(make_image(800, 600))
    client = await make_client([file_origin(originals)])
    await wait_ready(client, "e")
    first = await client.get("/images/e?w=300")
    etag = first.headers["ETag"]
    again = await client.get("/images/e?w=300", headers={"If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    other = await client.get("/images/e?w=900", headers={"If-None-Match": etag})
    assert other.status == 200


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/images/..x", 400),
        ("/images/a..b/info.json", 400),
        ("/images/-leading", 400),
        ("/images/" + "a" * 129, 400),
        ("/images/a%20b", 400),
        ("/images/ok?w=abc", 400),
        ("/images/ok?w=-5", 400),
        ("/images/ok?w=nan", 400),
        ("/images/ok?dpr=5", 400),
        ("/images/ok?dpr=0.5", 400),
        ("/images/ok?dpr=x", 400),
    ],
)
async def test_bad_requests(
    make_client: AppFactory, originals: Path, origin_server: FakeOrigin, path: str, status: int
) -> None:
    """Bad IDs and parameters are 400 JSON errors, and no origin is touched."""
    client = await make_client([http_origin(origin_server)])
    response = await client.get(path)
    assert response.status == status
    body = await response.json()
    assert body.get("error")
    assert origin_server.total_hits() == 0


async def test_unknown_id_is_404_and_leaves_nothing(
    make_client: AppFactory, originals: Path, tmp_path: Path
) -> None:
    """An ID no origin has is a 404 on every viewer route and leaves no record or file behind."""
    client = await make_client([file_origin(originals)])
    for path in ("/images/ghost", "/images/ghost/info.json", "/images/ghost/placeholder.jpg"):
        response = await client.get(path)
        assert response.status == 404, path
        assert (await response.json())["error"] == "image ghost not found"
    events = await client.get("/images/ghost/events")
    assert events.status == 404
    store = client.app[STATE].store
    assert await store.get_image("ghost") is None
    assert not list((tmp_path / "data" / "cache").rglob("ghost"))


async def test_invalid_image_is_415(make_client: AppFactory, originals: Path) -> None:
    """A file that is not an image ends as invalidImage: info.json says so, a view is 415."""
    (originals / "text").write_bytes(b"this is not an image at all" * 10)
    client = await make_client([file_origin(originals)])
    info = await wait_ready(client, "text")
    assert info["status"] == "error"
    assert info["error"] == "invalidImage"
    response = await client.get("/images/text")
    assert response.status == 415
    assert "invalidImage" in (await response.json())["error"]


async def test_over_pixel_limit_is_invalid(make_client: AppFactory, originals: Path) -> None:
    """An image over limits.max_pixels is refused from its header as invalidImage."""
    (originals / "big").write_bytes(make_image(1000, 1000))
    client = await make_client([file_origin(originals)], limits={"max_pixels": 500_000})
    info = await wait_ready(client, "big")
    assert (info["status"], info["error"]) == ("error", "invalidImage")
    assert "pixels" in info["reason"]


async def test_over_size_limit_is_invalid(
    make_client: AppFactory, origin_server: FakeOrigin
) -> None:
    """A source over limits.max_source_bytes is refused while streaming as invalidImage."""
    origin_server.files["huge"] = make_image(900, 900, Q=100)
    client = await make_client([http_origin(origin_server)], limits={"max_source_bytes": 10_000})
    info = await wait_ready(client, "huge")
    assert (info["status"], info["error"]) == ("error", "invalidImage")


async def test_http_origin_errors_then_retry(
    make_client: AppFactory, origin_server: FakeOrigin
) -> None:
    """A failing origin gives uploadError (502); a later view tries again and succeeds."""
    origin_server.files["flaky"] = make_image(500, 400)
    origin_server.modes["flaky"] = "500"
    client = await make_client([http_origin(origin_server)])
    info = await wait_ready(client, "flaky")
    assert (info["status"], info["error"]) == ("error", "uploadError")
    assert origin_server.hits["flaky"] == 2  # one retry (limits.fetch_retries = 1)
    del origin_server.modes["flaky"]
    response = await client.get("/images/flaky?w=100")
    assert response.status == 200
    info = await wait_ready(client, "flaky")
    assert info["status"] == "ready"


@pytest.mark.parametrize("mode", ["slow", "truncated", "403"])
async def test_http_origin_transfer_failures(
    make_client: AppFactory, origin_server: FakeOrigin, mode: str
) -> None:
    """A stalled, truncated or refused transfer ends as uploadError, and a view says 502."""
    origin_server.files["bad"] = make_image(500, 400)
    origin_server.modes["bad"] = mode
    client = await make_client([http_origin(origin_server)], limits={"fetch_retries": 0})
    info = await wait_ready(client, "bad")
    assert (info["status"], info["error"]) == ("error", "uploadError")
    response = await client.get("/images/bad/placeholder.jpg")
    # the view starts a new pull (uploadError is retried); it fails again the same way
    assert response.status in (502, 503)


async def test_origins_tried_in_order_with_extensions_and_patterns(
    make_client: AppFactory, originals: Path, origin_server: FakeOrigin
) -> None:
    """Origins whose id_pattern matches are tried in order; extensions are tried in order."""
    (originals / "a.png").write_bytes(make_image(400, 300, fmt="png"))
    origin_server.files["b"] = make_image(400, 300)
    origin_server.files["only-web"] = make_image(400, 300)
    client = await make_client(
        [
            file_origin(originals, extensions=[".jpg", ".png"], id_pattern="[ab]"),
            http_origin(origin_server),
        ]
    )
    assert (await wait_ready(client, "a"))["status"] == "ready"
    assert (await wait_ready(client, "b"))["status"] == "ready"  # file has no b: next origin
    assert (await wait_ready(client, "only-web"))["status"] == "ready"
    assert origin_server.hits == {"b": 1, "only-web": 1}


async def test_single_flight_cold_views(make_client: AppFactory, origin_server: FakeOrigin) -> None:
    """60 concurrent first views of one ID cause exactly one origin download."""
    origin_server.files["herd"] = make_image(1200, 800)
    origin_server.delay = 0.3  # keep the download open while the herd arrives
    client = await make_client([http_origin(origin_server)])
    responses = await asyncio.gather(*(client.get("/images/herd?w=300") for _ in range(60)))
    assert {r.status for r in responses} == {200}
    await wait_ready(client, "herd")
    assert origin_server.hits == {"herd": 1}


async def test_path_traversal_in_file_origin(make_client: AppFactory, tmp_path: Path) -> None:
    """A file origin never serves outside its root, even through a symlink."""
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(make_image(100, 100))
    (root / "link").symlink_to(secret)
    client = await make_client([file_origin(root)])
    assert (await client.get("/images/link/info.json")).status == 404
    assert (await client.get("/images/%2e%2e%2fsecret.jpg")).status in (400, 404)


async def test_versioned_renditions_are_immutable(make_client: AppFactory, originals: Path) -> None:
    """Versioned files carry the immutable cache header; unknown widths/formats are 404."""
    (originals / "v").write_bytes(make_image(1000, 800))
    client = await make_client([file_origin(originals)])
    await wait_ready(client, "v")
    response = await client.get("/images/v/v1/640.webp")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response.headers["Content-Type"] == "image/webp"
    for path in ("/images/v/v1/700.webp", "/images/v/v1/640.gif", "/images/v/v2/640.webp"):
        assert (await client.get(path)).status == 404, path
    assert (await client.get("/images/nobody/v1/640.webp")).status == 404


async def test_rendition_built_on_request(
    make_client: AppFactory, originals: Path, tmp_path: Path
) -> None:
    """A format configured after an image was built is built on request, once, for many callers."""
    (originals / "late").write_bytes(make_image(900, 600))
    client = await make_client([file_origin(originals)])
    await wait_ready(client, "late")
    assert (await client.get("/images/late/v1/640.avif")).status == 404
    await client.close()
    client = await make_client(
        [file_origin(originals)], processing={"formats": ["webp", "jpg", "avif"]}
    )
    responses = await asyncio.gather(*(client.get("/images/late/v1/640.avif") for _ in range(5)))
    assert {r.status for r in responses} == {200}
    bodies = {await r.read() for r in responses}
    assert len(bodies) == 1
    assert decode(bodies.pop()).width == 640


async def test_deepzoom_descriptor_and_tiles(make_client: AppFactory, originals: Path) -> None:
    """zoom.dzi is the DeepZoom 2008 XML; levels and tile sizes follow the dzsave/OpenSeadragon rules."""
    width, height = 1000, 600
    (originals / "z").write_bytes(make_image(width, height))
    client = await make_client([file_origin(originals)])
    await wait_ready(client, "z")
    response = await client.get("/images/z/v1/zoom.dzi")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/xml")
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    root = ET.fromstring(await response.read())
    assert root.tag == f"{DZ_NS}Image"
    assert (root.get("TileSize"), root.get("Overlap"), root.get("Format")) == ("254", "1", "jpg")
    size = root.find(f"{DZ_NS}Size")
    assert size is not None
    assert (size.get("Width"), size.get("Height")) == (str(width), str(height))
    top = math.ceil(math.log2(max(width, height)))
    expected = {(0, 0): (255, 255), (1, 0): (256, 255), (3, 0): (1000 - 3 * 254 + 1, 255)}
    for (col, row), (w, h) in expected.items():
        tile = await client.get(f"/images/z/v1/zoom_files/{top}/{col}_{row}.jpg")
        assert tile.status == 200
        assert tile.headers["Content-Type"] == "image/jpeg"
        image = decode(await tile.read())
        assert (image.width, image.height) == (w, h), (col, row)
    assert (await client.get("/images/z/v1/zoom_files/0/0_0.jpg")).status == 200
    assert (await client.get(f"/images/z/v1/zoom_files/{top + 1}/0_0.jpg")).status == 404
    assert (await client.get(f"/images/z/v1/zoom_files/{top}/9_9.jpg")).status == 404
    assert (await client.get(f"/images/z/v1/zoom_files/{top}/0_0.png")).status == 404
    assert (await client.get("/images/nobody/v1/zoom.dzi")).status == 404


async def test_events_stream_until_ready(make_client: AppFactory, originals: Path) -> None:
    """/events sends info.json objects as stages appear and ends after ready."""
    (originals / "ev").write_bytes(make_image(1400, 900))
    client = await make_client([file_origin(originals)])
    response = await client.get("/images/ev/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    text = (await asyncio.wait_for(response.text(), 30)).strip()

    events = [json.loads(block.removeprefix("data: ")) for block in text.split("\n\n")]
    assert events[-1]["status"] == "ready"
    assert all(e["id"] == "ev" for e in events)
    stages = [tuple(e["stages"].values()) for e in events]
    assert stages == sorted(stages)  # stages only ever switch on, in order


async def test_cors_on_viewer_routes(make_client: AppFactory, originals: Path) -> None:
    """Viewer routes (errors included) allow cross-origin reads; preflights are answered."""
    (originals / "c").write_bytes(make_image(400, 300))
    client = await make_client([file_origin(originals)])
    await wait_ready(client, "c")
    for path in ("/images/c/info.json", "/images/c?w=100", "/images/..bad", "/smart-frame.js"):
        response = await client.get(path, headers={"Origin": "https://shop.example"})
        assert response.headers["Access-Control-Allow-Origin"] == "*", path
    preflight = await client.options(
        "/images/c/info.json",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]
    health = await client.get("/healthz", headers={"Origin": "https://shop.example"})
    assert "Access-Control-Allow-Origin" not in health.headers


async def test_cors_specific_origins(make_client: AppFactory, originals: Path) -> None:
    """With a list of origins, a listed one is echoed with Vary: Origin; others get no allowance."""
    (originals / "c").write_bytes(make_image(400, 300))
    client = await make_client(
        [file_origin(originals)], server={"cors_origins": ["https://shop.example"]}
    )
    ok = await client.get("/images/c/info.json", headers={"Origin": "https://shop.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Origin" in ok.headers["Vary"]
    other = await client.get("/images/c/info.json", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_healthz_and_metrics(make_client: AppFactory, originals: Path) -> None:
    """/healthz reports queue, busy workers and cache bytes; /metrics is Prometheus text."""
    (originals / "m").write_bytes(make_image(600, 400))
    client = await make_client([file_origin(originals)])
    await wait_ready(client, "m")
    health = await client.get("/healthz")
    assert health.status == 200
    body: dict[str, Any] = await health.json()
    assert body["status"] == "ok"
    assert set(body) == {"status", "queue", "workers_busy", "cache_bytes"}
    metrics = await client.get("/metrics")
    text = await metrics.text()
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert 'imgproxy_requests_total{route="/images/{id}/info.json",status="200"}' in text
    assert 'imgproxy_stage_seconds_count{stage="placeholder"} 1' in text
    assert "imgproxy_queue_depth" in text
    assert "imgproxy_cache_bytes" in text


async def test_unknown_route_is_json_404(make_client: AppFactory, originals: Path) -> None:
    """Routes that do not exist answer with a JSON error too."""
    client = await make_client([file_origin(originals)])
    response = await client.get("/nowhere")
    assert response.status == 404
    assert "error" in await response.json()
    response = await client.post("/images/x")
    assert response.status == 405
    assert "error" in await response.json()


async def test_placeholder_wait_times_out_with_503(
    make_client: AppFactory, origin_server: FakeOrigin
) -> None:
    """When the placeholder is not ready within first_view_wait, the answer is 503 + Retry-After."""
    origin_server.files["slowpoke"] = make_image(400, 300)
    origin_server.delay = 1.5
    client = await make_client([http_origin(origin_server)], viewer={"first_view_wait": 0.2})
    response = await client.get("/images/slowpoke")
    assert response.status == 503
    assert response.headers["Retry-After"]
    assert "error" in await response.json()

    async def placeholder_ready() -> bool:
        return (await client.get("/images/slowpoke")).status == 200

    await poll(placeholder_ready)


async def test_healthz_503_when_store_unusable(make_client: AppFactory, originals: Path) -> None:
    """/healthz answers 503 naming the metadata store when the database cannot be used."""
    client = await make_client([file_origin(originals)])
    assert (await client.get("/healthz")).status == 200
    await client.app[STATE].store.close()
    response = await client.get("/healthz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "error"
    assert "metadata store" in body["failed"]
