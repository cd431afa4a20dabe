"""Hostile originals through the real app (SPEC §2, §9): every one ends as invalidImage or is
processed correctly, bombs are refused from the header quickly and without memory growth, and
the server stays healthy throughout. All files are made here; nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import pyvips

from tests.conftest import AppFactory, FakeOrigin, http_origin, make_image, wait_ready

Client = Any

MAX_PIXELS = 5_000_000  # small, so that the frame and page bombs below are over it
MAX_SOURCE_BYTES = 2_000_000
LIMITS = {"max_pixels": MAX_PIXELS, "max_source_bytes": MAX_SOURCE_BYTES}
QUICK = 2.0  # seconds from the first view to the error being visible
RSS_GROWTH = 100 * 1024 * 1024


# -- making hostile files --------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A well-formed PNG header claiming width x height RGB pixels, with a one-row IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 64, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int = 65_000, height: int = 65_000) -> bytes:
    """A small baseline JPEG whose SOF0 is patched to claim width x height."""
    data = bytearray(make_image(64, 64))
    at = 2
    while data[at + 1] not in (0xC0, 0xC1, 0xC2):
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    struct.pack_into(">HH", data, at + 5, height, width)  # after marker, length, precision
    return bytes(data)


@functools.cache
def many_frames_gif(frames: int = 3000, side: int = 64) -> bytes:
    """An animated GIF of `frames` distinct frames (a moving cross), built as one tall strip."""
    xy = pyvips.Image.xyz(side, side * frames)
    x, y = xy[0], xy[1]
    page = (y / side).cast("int")
    row = y - page * side
    cross = (row == page % side) | (x == (page / side).cast("int") % side)
    grey = cross.ifthenelse(255, 0).cast("uchar")
    strip = grey.bandjoin([grey, grey]).copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", side)
    data: bytes = strip.gifsave_buffer()
    return data


def many_pages_tiff(pages: int = 4000, side: int = 64) -> bytes:
    """A multi-page TIFF whose width x height x pages is over MAX_PIXELS."""
    strip = pyvips.Image.black(side, side * pages).cast("uchar").copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", side)
    data: bytes = strip.tiffsave_buffer(compression="deflate")
    return data


def cut(data: bytes, fraction: float = 0.6) -> bytes:
    return data[: int(len(data) * fraction)]


def svg_with_external_entity(canary_url: str) -> bytes:
    return f"""<?xml version="1.0"?>
<!DOCTYPE svg [
  <!ENTITY local SYSTEM "file:///etc/passwd">
  <!ENTITY remote SYSTEM "{canary_url}">
]>
<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100">
  <text x="0" y="20">&local;&remote;</text>
  <image href="{canary_url}" width="10" height="10"/>
</svg>""".encode()


def with_icc(profile: bytes, colour: tuple[int, int, int]) -> bytes:
    """A flat-coloured JPEG carrying `profile` in an APP2 ICC_PROFILE segment.

    Written by hand: libvips' jpegsave validates a profile and silently drops a corrupt one.
    """
    image = pyvips.Image.black(600, 400).new_from_image(list(colour)).cast("uchar")
    jpeg: bytes = image.copy(interpretation="srgb").jpegsave_buffer(Q=95, keep="none")
    payload = b"ICC_PROFILE\x00\x01\x01" + profile  # chunk 1 of 1
    app2 = b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app2 + jpeg[2:]


def srgb_profile() -> bytes:
    """libvips' built-in sRGB profile, as embedded by icc_transform."""
    pixel = (pyvips.Image.black(8, 8, bands=3) + 100).cast("uchar").copy(interpretation="srgb")
    profile: bytes = pixel.icc_transform("srgb", input_profile="srgb").get("icc-profile-data")
    return profile


UPRIGHT_SIZE = (400, 300)
RED_BLOCK = (100, 75)
# The stored pixels for each EXIF orientation, such that the orientation turns them upright.
STORED_FOR = {
    1: lambda image: image,
    2: lambda image: image.fliphor(),
    3: lambda image: image.rot180(),
    4: lambda image: image.flipver(),
    5: lambda image: image.rot90().fliphor(),  # transpose
    6: lambda image: image.rot270(),
    7: lambda image: image.rot90().flipver(),  # transverse
    8: lambda image: image.rot90(),
}


def oriented(orientation: int) -> bytes:
    """White 400x300 with a red block in the top-left corner, stored turned and tagged back."""
    white = pyvips.Image.black(*UPRIGHT_SIZE, bands=3) + 255
    red = pyvips.Image.black(*RED_BLOCK).new_from_image([255, 0, 0])
    upright = white.insert(red, 0, 0).cast("uchar").copy(interpretation="srgb")
    stored = STORED_FOR[orientation](upright).copy()
    stored.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    data: bytes = stored.jpegsave_buffer(Q=90)
    return data


HOSTILE: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "text": lambda: b"just some text, certainly not an image\n" * 20,
    "html": lambda: b"<!doctype html><html><body><h1>404 Not Found</h1></body></html>",
    "truncated-jpeg": lambda: cut(make_image(800, 600)),
    "truncated-png": lambda: cut(make_image(800, 600, fmt="png")),
    "truncated-gif": lambda: cut(make_image(300, 200, fmt="gif")),
    "truncated-webp": lambda: cut(make_image(800, 600, fmt="webp")),
    "png-100000x100000": png_bomb,
    "jpeg-65000x65000": jpeg_bomb,
    "gif-3000-frames": many_frames_gif,
    "tiff-4000-pages": many_pages_tiff,
    "over-max-source-bytes": lambda: make_image(300, 200) + b"\0" * (MAX_SOURCE_BYTES + 1),
}


REFUSED_FROM_HEADER = {
    "png-100000x100000": "100000x100000",
    "jpeg-65000x65000": "65000x65000",
    "gif-3000-frames": "3000 pages",
    "tiff-4000-pages": "4000 pages",
    "over-max-source-bytes": "limit",
}


# -- watching the server ---------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size (the app runs in-process)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@dataclass
class Watch:
    baseline: int = field(default_factory=rss_bytes)
    peak: int = 0
    health: list[int] = field(default_factory=list)

    @property
    def growth(self) -> int:
        return max(self.peak, rss_bytes()) - self.baseline


@asynccontextmanager
async def watching(client: Client) -> AsyncIterator[Watch]:
    """Poll /healthz and sample RSS every 20 ms while the body runs; a last probe after it."""
    watch = Watch()
    stop = asyncio.Event()

    async def probe() -> None:
        response = await client.get("/healthz")
        watch.health.append(response.status)
        await response.release()
        watch.peak = max(watch.peak, rss_bytes())

    async def loop() -> None:
        while not stop.is_set():
            await probe()
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.02)
            except TimeoutError:
                pass

    task = asyncio.create_task(loop())
    try:
        yield watch
    finally:
        stop.set()
        await task
    await probe()
    assert watch.health and all(status == 200 for status in watch.health), watch.health


async def start(make_client: AppFactory, origin: FakeOrigin, **limits: Any) -> Client:
    origin.files["good"] = make_image(800, 600)
    return await make_client([http_origin(origin)], limits={**LIMITS, **limits})


async def ends_invalid(client: Client, image_id: str) -> tuple[dict[str, Any], float]:
    """View a hostile ID: a 415, then info.json says invalidImage with a reason; and how long."""
    started = time.monotonic()
    response = await client.get(f"/images/{image_id}?w=300")
    body = await response.json()
    info = await wait_ready(client, image_id, timeout=15)
    took = time.monotonic() - started
    assert response.status == 415, (response.status, body)
    assert "invalidImage" in body["error"]
    assert (info["status"], info["error"]) == ("error", "invalidImage"), info
    assert info["reason"], info
    assert not any(info["stages"].values()), info
    return info, took


def pixel(image: pyvips.Image, x: float, y: float) -> list[float]:
    """The pixel at fractions (x, y) of the image's width and height."""
    values: list[float] = image(int(x * (image.width - 1)), int(y * (image.height - 1)))
    return values


def is_red(values: list[float]) -> bool:
    return values[0] > 180 and values[1] < 90 and values[2] < 90


def is_white(values: list[float]) -> bool:
    return min(values[:3]) > 200


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_original_ends_invalid_quickly_and_server_stays_healthy(
    make_client: AppFactory, origin_server: FakeOrigin, case: str
) -> None:
    """A non-image, truncated, oversized or pixel-bomb original ends invalidImage in well under
    QUICK seconds, with little RSS growth, /healthz 200 throughout, and later images still work."""
    origin_server.files[case] = HOSTILE[case]()
    client = await start(make_client, origin_server)
    async with watching(client) as watch:
        info, took = await ends_invalid(client, case)
    assert took < QUICK, f"{case}: {took:.2f}s"
    assert watch.growth < RSS_GROWTH, f"{case}: RSS grew {watch.growth / 2**20:.0f} MB"
    assert origin_server.hits[case] == 1  # an invalid image is final: no refetch
    if case in REFUSED_FROM_HEADER:  # refused by the limits, not by a decode that failed
        assert REFUSED_FROM_HEADER[case] in info["reason"], info["reason"]
    assert (await wait_ready(client, "good"))["status"] == "ready"


async def test_all_hostile_originals_at_once_keep_the_server_healthy(
    make_client: AppFactory, origin_server: FakeOrigin
) -> None:
    """Every hostile original viewed at the same time: each ends invalidImage, /healthz stays 200."""
    for case, build in HOSTILE.items():
        origin_server.files[case] = build()
    client = await start(make_client, origin_server)
    async with watching(client) as watch:
        started = time.monotonic()
        results = await asyncio.gather(*(ends_invalid(client, case) for case in HOSTILE))
        took = time.monotonic() - started
    assert len(results) == len(HOSTILE)
    assert took < 2 * QUICK, f"{took:.2f}s"
    assert watch.growth < RSS_GROWTH, f"RSS grew {watch.growth / 2**20:.0f} MB"
    assert (await wait_ready(client, "good"))["status"] == "ready"


async def test_svg_with_external_entities_is_refused_unread(
    make_client: AppFactory, origin_server: FakeOrigin
) -> None:
    """An SVG (with XXE to /etc/passwd and to a URL) is invalidImage: SVG is off, nothing is read."""
    canary = origin_server.url + "xxe-canary"
    origin_server.files["xxe-canary"] = b"canary"
    origin_server.files["xxe"] = svg_with_external_entity(canary)
    client = await start(make_client, origin_server)
    async with watching(client):
        info, took = await ends_invalid(client, "xxe")
    assert took < QUICK
    assert "root:" not in info["reason"]
    assert origin_server.hits.get("xxe-canary", 0) == 0


async def test_gif_with_thousands_of_frames_under_the_limit_shows_its_first_frame(
    make_client: AppFactory, origin_server: FakeOrigin
) -> None:
    """Under max_pixels, a 3000-frame GIF is built from its first frame only: 64x64, quickly."""
    origin_server.files["frames"] = many_frames_gif()
    client = await start(make_client, origin_server, max_pixels=1_000_000_000)
    async with watching(client) as watch:
        started = time.monotonic()
        info = await wait_ready(client, "frames")
        took = time.monotonic() - started
    assert info["status"] == "ready", info
    assert (info["width"], info["height"]) == (64, 64)
    assert took < 5
    assert watch.growth < RSS_GROWTH, f"RSS grew {watch.growth / 2**20:.0f} MB"
    response = await client.get("/images/frames", headers={"Accept": "image/jpeg"})
    assert response.headers["X-Image-Stage"] == "display"
    frame = pyvips.Image.new_from_buffer(await response.read(), "")
    assert (frame.width, frame.height) == (64, 64)
    dzi = await (await client.get("/images/frames/v1/zoom.dzi")).text()
    assert 'Width="64"' in dzi and 'Height="64"' in dzi


def corrupt_profile(kind: str) -> bytes:
    srgb = bytearray(srgb_profile())
    if kind == "garbage":
        return b"\x00garbage, not an ICC profile\xff" * 40
    if kind == "truncated":
        return bytes(srgb[:200])  # a real header whose tag table runs off the end
    if kind == "lying-header":
        srgb[16:20] = b"CMYK"  # claims a colour space the image does not have
        struct.pack_into(">I", srgb, 0, 10**9)  # and a size it does not have
        struct.pack_into(">I", srgb, 128, 0x7FFFFFFF)  # and absurdly many tags
        return bytes(srgb)
    raise ValueError(kind)


@pytest.mark.parametrize("profile", ["garbage", "truncated", "lying-header"])
async def test_corrupt_icc_profile_is_ignored_and_colours_kept(
    make_client: AppFactory, origin_server: FakeOrigin, profile: str
) -> None:
    """A JPEG with a corrupt ICC profile is built as plain sRGB: same colours, no profile kept."""
    colour = (200, 120, 40)
    source = with_icc(corrupt_profile(profile), colour)
    assert pyvips.Image.new_from_buffer(source, "").get_typeof("icc-profile-data")
    origin_server.files["icc"] = source
    client = await start(make_client, origin_server)
    async with watching(client):
        info = await wait_ready(client, "icc")
    assert info["status"] == "ready", info
    assert (info["width"], info["height"]) == (600, 400)
    for fmt, accept in (("jpg", "image/jpeg"), ("webp", "image/webp")):
        response = await client.get("/images/icc?w=320", headers={"Accept": accept})
        assert response.status == 200
        assert response.headers["X-Image-Stage"] == "display"
        out = pyvips.Image.new_from_buffer(await response.read(), "")
        assert out.width == 320, fmt
        assert not out.get_typeof("icc-profile-data"), fmt
        centre = pixel(out, 0.5, 0.5)
        assert all(abs(got - want) <= 8 for got, want in zip(centre, colour, strict=False)), (
            fmt,
            centre,
        )
    tile = await client.get("/images/icc/v1/zoom_files/0/0_0.jpg")
    assert tile.status == 200


@pytest.mark.parametrize("orientation", range(1, 9))
async def test_every_exif_orientation_is_served_upright(
    make_client: AppFactory, origin_server: FakeOrigin, orientation: int
) -> None:
    """For EXIF orientations 1..8 the display rendition, placeholder and deepest tile are upright."""
    image_id = f"turned-{orientation}"
    origin_server.files[image_id] = oriented(orientation)
    client = await start(make_client, origin_server)
    info = await wait_ready(client, image_id)
    assert info["status"] == "ready", info
    assert (info["width"], info["height"]) == UPRIGHT_SIZE

    response = await client.get(f"/images/{image_id}?w=400", headers={"Accept": "image/jpeg"})
    assert response.headers["X-Image-Stage"] == "display"
    display = pyvips.Image.new_from_buffer(await response.read(), "")
    assert (display.width, display.height) == UPRIGHT_SIZE
    assert is_red(pixel(display, 0.05, 0.05)), pixel(display, 0.05, 0.05)
    for corner in ((0.95, 0.05), (0.05, 0.95), (0.95, 0.95)):
        assert is_white(pixel(display, *corner)), (corner, pixel(display, *corner))

    placeholder = await (await client.get(f"/images/{image_id}/placeholder.jpg")).read()
    small = pyvips.Image.new_from_buffer(placeholder, "")
    assert small.width > small.height
    assert is_red(pixel(small, 0.05, 0.05)) and is_white(pixel(small, 0.95, 0.95))

    tile_data = await (await client.get(f"/images/{image_id}/v1/zoom_files/9/0_0.jpg")).read()
    tile = pyvips.Image.new_from_buffer(tile_data, "")
    assert is_red(pixel(tile, 0.02, 0.02)) and is_white(pixel(tile, 0.9, 0.9))


async def test_invalid_image_reason_does_not_reveal_server_paths(
    make_client: AppFactory, origin_server: FakeOrigin, tmp_path: Any
) -> None:
    """The public reason of an invalidImage never names a file on the server."""
    origin_server.files["page"] = HOSTILE["html"]()
    client = await start(make_client, origin_server)
    info, _ = await ends_invalid(client, "page")
    assert str(tmp_path) not in info["reason"], info["reason"]
    assert "/original" not in info["reason"], info["reason"]
