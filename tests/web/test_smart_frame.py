"""<smart-frame> in Chromium against the real server (SPEC §7): stages, renditions, zoom, errors."""

from __future__ import annotations

import math
import re
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from tests.conftest import make_image
from tests.web.conftest import ARTIFACTS, Origin, Server, frames_page

DZ_NS = "{http://schemas.microsoft.com/deepzoom/2008}"
TILE = re.compile(
    r"/images/(?P<id>[^/]+)/v\d+/zoom_files/(?P<level>\d+)/(?P<col>\d+)_(?P<row>\d+)\."
)
RENDITION = re.compile(r"/images/(?P<id>[^/]+)/v\d+/(?P<width>\d+)\.(?P<ext>[a-z]+)$")


def stage_is(page: Any, frame_id: str, *stages: str) -> None:
    """Wait until the frame shows one of `stages`."""
    page.wait_for_function(
        "([id, stages]) => stages.includes(document.getElementById(id).stage)",
        arg=[frame_id, list(stages)],
    )


def zoom_ready(page: Any, frame_id: str) -> None:
    page.wait_for_function(
        "id => { const f = document.getElementById(id);"
        " return f.stage === 'display' && f.getAttribute('zoom') === 'ready' }",
        arg=frame_id,
    )


def settled(page: Any, frame_id: str) -> dict[str, Any]:
    """Wait until the zoom view is still (no animation, no tile pending) and return it."""
    page.wait_for_function("id => !document.getElementById(id).view.busy", arg=frame_id)
    view: dict[str, Any] = page.evaluate("id => document.getElementById(id).view", frame_id)
    return view


def shown_width(page: Any, frame_id: str) -> int:
    """The width of the rendition the frame shows, from its URL."""
    src = page.evaluate(
        "id => document.getElementById(id).shadowRoot.querySelector('img.disp').currentSrc",
        frame_id,
    )
    match = RENDITION.search(src)
    assert match, src
    return int(match["width"])


def wait_until(page: Any, check: Callable[[], Any], timeout: float = 20) -> Any:
    """Poll a Python-side condition, letting playwright dispatch events in between."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        page.wait_for_timeout(25)
    return result


def dzi(url: str) -> dict[str, int]:
    with urllib.request.urlopen(url, timeout=10) as response:
        root = ET.fromstring(response.read())
    size = root.find(f"{DZ_NS}Size")
    assert size is not None
    return {
        "tile": int(root.attrib["TileSize"]),
        "width": int(size.attrib["Width"]),
        "height": int(size.attrib["Height"]),
    }


def tiles_in_view(dz: dict[str, int], level: int, view: dict[str, float]) -> set[tuple[int, int]]:
    """The (col, row) of every tile of `level` that intersects the visible rectangle."""
    max_level = math.ceil(math.log2(max(dz["width"], dz["height"])))
    scale = 2 ** (max_level - level)  # original px per level px
    span = dz["tile"] * scale
    cols = math.ceil(math.ceil(dz["width"] / scale) / dz["tile"])
    rows = math.ceil(math.ceil(dz["height"] / scale) / dz["tile"])
    c0, r0 = int(view["x"] // span), int(view["y"] // span)
    c1 = min(cols - 1, math.ceil((view["x"] + view["width"]) / span) - 1)
    r1 = min(rows - 1, math.ceil((view["y"] + view["height"]) / span) - 1)
    return {(c, r) for c in range(c0, c1 + 1) for r in range(r0, r1 + 1)}


def test_cold_image_goes_loader_placeholder_display(
    origin: Origin, proxy: Server, new_page: Callable[..., Any]
) -> None:
    """A cold image shows the loader while the origin stalls, then the blurred placeholder, then the fitting rendition, decoded before it replaces the placeholder."""
    origin.files["seq-cold"] = make_image(1600, 1200)
    requested, release = origin.hold("seq-cold")
    page = new_page()
    held: list[Any] = []
    is_rendition = re.compile(r"/images/seq-cold/v\d+/")
    released = False

    def hold_renditions(route: Any) -> None:
        if released:
            route.continue_()
        else:
            held.append(route)

    page.route(is_rendition, hold_renditions)
    page.goto(
        frames_page(
            origin,
            proxy,
            "seq",
            '<smart-frame id="a" image-id="seq-cold" style="width:400px"></smart-frame>',
        )
    )

    assert requested.wait(20), "the proxy never asked the origin"
    assert page.evaluate("document.getElementById('a').stage") == "loading"
    assert page.locator("#a .loader").is_visible()
    assert page.locator("#a .loader").get_attribute("role") == "status"
    assert not page.locator("#a img.ph").is_visible()
    assert page.locator("#a img.disp").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#a").screenshot(path=str(ARTIFACTS / "stage-1-loading.png"))

    release.set()
    stage_is(page, "a", "placeholder")
    assert page.locator("#a img.ph").is_visible()
    blur = page.locator("#a img.ph").evaluate("img => getComputedStyle(img).filter")
    assert blur.startswith("blur(")
    assert not page.locator("#a .loader").is_visible()
    assert page.locator("#a img.ph").evaluate("img => img.naturalWidth") == 32
    # The zoom control is there, disabled, with its "preparing zoom" hint.
    assert page.get_by_role("button", name="Zoom in").is_disabled()
    assert page.locator("#a .hint").inner_text().lower().startswith("preparing zoom")

    wait_until(page, lambda: any(RENDITION.search(r.request.url) for r in held))
    assert page.evaluate("document.getElementById('a').stage") == "placeholder"
    page.locator("#a").screenshot(path=str(ARTIFACTS / "stage-2-placeholder.png"))
    released = True
    for route in held:
        route.continue_()

    stage_is(page, "a", "display")
    assert shown_width(page, "a") == 640  # 400 CSS px at DPR 1
    page.wait_for_function(
        "!document.getElementById('a').shadowRoot.querySelector('img.disp').matches('.entering')"
    )
    assert page.evaluate("stages.a") == ["loading", "placeholder", "display"]
    assert page.evaluate("insertedUndecoded") == []
    box = page.locator("#a").bounding_box()
    assert box is not None and (box["width"], box["height"]) == (400, 300)  # the image's 4:3
    page.wait_for_function(
        "!document.getElementById('a').shadowRoot.querySelector('img.ph').checkVisibility()"
    )
    zoom_ready(page, "a")
    page.locator("#a").screenshot(path=str(ARTIFACTS / "stage-3-display.png"))
    assert page.get_by_role("button", name="Zoom in").is_enabled()
    assert not page.locator("#a .hint").is_visible()


def test_rendition_width_fits_size_and_dpr(
    origin: Origin, proxy: Server, new_page: Callable[..., Any]
) -> None:
    """The rendition is the smallest width >= rendered width x devicePixelRatio, and is re-chosen when the frame grows."""
    origin.files["widths"] = make_image(2000, 1500)
    body = (
        '<smart-frame id="s" image-id="widths" style="width:300px"></smart-frame>'
        '<smart-frame id="l" image-id="widths" style="width:700px"></smart-frame>'
    )
    expected = {1: (320, 960), 2: (640, 1280)}  # 300 and 700 CSS px; 1400 > 1280, the largest
    for dpr, (small, large) in expected.items():
        page = new_page(dpr=dpr)
        requests: list[str] = []
        page.on("request", lambda r, log=requests: log.append(r.url))
        page.goto(frames_page(origin, proxy, f"widths-{dpr}", body))
        stage_is(page, "s", "display")
        stage_is(page, "l", "display")
        assert (shown_width(page, "s"), shown_width(page, "l")) == (small, large), f"dpr {dpr}"
        assert page.evaluate("document.getElementById('s').getBoundingClientRect().height") == 225
        renditions = [u for u in requests if RENDITION.search(u)]
        assert sorted(renditions) == sorted(set(renditions))  # each fetched once
        assert all(u.endswith(".webp") for u in renditions)  # webp listed, avif not: webp
    # On the DPR 2 page: growing the small frame to 700 px re-chooses 1280 ...
    page.evaluate("document.getElementById('s').style.width = '700px'")
    page.wait_for_function(
        "document.getElementById('s').shadowRoot.querySelector('img.disp').currentSrc.endsWith('/1280.webp')"
    )
    assert page.locator("#s img.disp").count() == 1  # the old one went when the new one was in
    # ... and shrinking it back keeps the sharper one (no request once the resize is handled).
    # (Only renditions count: the zoom stage may land meanwhile and bring its descriptor.)
    count = len([u for u in requests if RENDITION.search(u)])
    page.evaluate("document.getElementById('s').style.width = '300px'")
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    assert shown_width(page, "s") == 1280
    assert len([u for u in requests if RENDITION.search(u)]) == count


def test_wheel_zoom_requests_only_tiles_in_view_at_deeper_levels(
    origin: Origin, proxy: Server, new_page: Callable[..., Any]
) -> None:
    """Wheel zoom around the pointer fetches tiles of a deeper DeepZoom level each step, exactly those in view."""
    origin.files["tiles"] = make_image(2000, 1500)
    page = new_page()
    tiles: list[tuple[int, int, int]] = []
    statuses: list[int] = []

    def record(response: Any) -> None:
        match = TILE.search(response.url)
        if match:
            tiles.append((int(match["level"]), int(match["col"]), int(match["row"])))
            statuses.append(response.status)

    page.on("response", record)
    page.goto(
        frames_page(
            origin,
            proxy,
            "tiles",
            '<smart-frame id="z" image-id="tiles" style="width:400px"></smart-frame>',
        )
    )
    zoom_ready(page, "z")
    dz = dzi(page.evaluate("document.getElementById('z').info.zoom.dzi"))
    assert tiles == []  # the rendition suffices at zoom 1
    box = page.locator("#z").bounding_box()
    assert box is not None
    pointer = (100, 100)  # frame px, off centre
    page.mouse.move(box["x"] + pointer[0], box["y"] + pointer[1])
    levels = []
    for step in (1, 2):
        page.mouse.wheel(0, -math.log(2) / 0.002)  # one notch of x2
        page.wait_for_function("document.getElementById('z').view.zoom > %s" % (2**step - 0.01))
        view = settled(page, "z")
        level = view["level"]
        levels.append(level)
        expected = tiles_in_view(dz, level, view)
        wait_until(
            page, lambda lv=level, want=expected: {(c, r) for t, c, r in tiles if t == lv} >= want
        )
        at_level = [(c, r) for lv, c, r in tiles if lv == level]
        assert sorted(at_level) == sorted(expected), f"step {step}: only the tiles in view, once"
        assert {lv for lv, _, _ in tiles} == set(levels)  # no level passed through mid-gesture
        # The original's point under the pointer stays there: (500, 500) at zoom 1 (fit 0.2).
        scale = view["width"] / 400
        assert abs(view["x"] + pointer[0] * scale - pointer[0] / 0.2) < 1
        assert abs(view["y"] + pointer[1] * scale - pointer[1] / 0.2) < 1
    max_level = math.ceil(math.log2(2000))
    assert levels == [max_level - 1, max_level]  # zoom 2 needs level 10, zoom 4 level 11
    all_at_max = math.ceil(2000 / dz["tile"]) * math.ceil(1500 / dz["tile"])
    assert len([t for t in tiles if t[0] == max_level]) <= all_at_max / 4  # 9 of 48
    assert set(statuses) == {200}


def test_keyboard_zoom_and_controls(
    origin: Origin, proxy: Server, new_page: Callable[..., Any]
) -> None:
    """When focused, + and - zoom, arrows pan, 0 resets; zoom stops at the original's full resolution; the labelled buttons zoom too."""
    origin.files["keys"] = make_image(2000, 1500)
    page = new_page()
    page.goto(
        frames_page(
            origin,
            proxy,
            "keys",
            '<smart-frame id="k" image-id="keys" style="width:400px"></smart-frame><button id="other">x</button>',
        )
    )
    zoom_ready(page, "k")
    page.keyboard.press("+")  # nothing focused: the page's, not the frame's
    assert settled(page, "k")["zoom"] == 1
    page.focus("#k")
    page.keyboard.press("+")
    view = settled(page, "k")
    assert math.isclose(view["zoom"], 1.5, rel_tol=1e-3)
    x0 = view["x"]
    page.keyboard.press("ArrowRight")
    assert settled(page, "k")["x"] > x0
    page.keyboard.press("ArrowLeft")
    assert math.isclose(settled(page, "k")["x"], x0, abs_tol=0.5)
    page.keyboard.press("-")
    assert settled(page, "k")["zoom"] == 1
    for _ in range(8):
        page.keyboard.press("+")
    view = settled(page, "k")
    assert math.isclose(view["zoom"], view["maxZoom"]) and math.isclose(
        view["maxZoom"], 5
    )  # 2000 px in 400
    assert view["level"] == view["maxLevel"] == 11
    assert page.get_by_role("button", name="Zoom in").is_disabled()
    page.keyboard.press("0")
    assert settled(page, "k")["zoom"] == 1
    assert page.get_by_role("button", name="Zoom out").is_disabled()
    assert page.get_by_role("button", name="Reset zoom").is_disabled()
    page.get_by_role("button", name="Zoom in").click()
    assert math.isclose(settled(page, "k")["zoom"], 2, rel_tol=1e-3)
    page.get_by_role("button", name="Reset zoom").click()
    assert settled(page, "k")["zoom"] == 1
    page.locator("#k").dblclick(position={"x": 200, "y": 150})
    assert math.isclose(settled(page, "k")["zoom"], 2, rel_tol=1e-3)
    assert page.get_by_role("group", name="Zoom").is_visible()


def test_errors_show_an_accessible_message(
    origin: Origin, proxy: Server, new_page: Callable[..., Any]
) -> None:
    """An unknown ID and an invalid image each show a role=alert message, not a broken image, while a good frame beside them still loads."""
    origin.files["not-an-image"] = b"this is not an image at all" * 40
    origin.files["good"] = make_image(600, 400)
    page = new_page()
    page.goto(
        frames_page(
            origin,
            proxy,
            "errors",
            '<smart-frame id="unknown" image-id="no-such-image" alt="Missing"></smart-frame>'
            '<smart-frame id="invalid" image-id="not-an-image"></smart-frame>'
            '<smart-frame id="good" image-id="good"></smart-frame>',
        )
    )
    for frame_id in ("unknown", "invalid"):
        stage_is(page, frame_id, "error")
        alert = page.locator(f"#{frame_id}").get_by_role("alert")
        assert alert.is_visible()
        assert page.locator(f"#{frame_id} img.disp").count() == 0
        assert not page.locator(f"#{frame_id} img.ph").is_visible()
        assert not page.locator(f"#{frame_id} .loader").is_visible()
        assert page.locator(f"#{frame_id} .ctl").is_hidden()
    assert "not found" in page.locator("#unknown").get_by_role("alert").inner_text()
    assert "Missing" in page.locator("#unknown").get_by_role("alert").inner_text()
    invalid = page.locator("#invalid").get_by_role("alert")
    assert "not an image" in invalid.inner_text()
    assert invalid.get_attribute("data-error") == "invalidImage"
    stage_is(page, "good", "display")
    assert page.evaluate("stages.unknown") == ["loading", "error"]


def test_drag_pans_and_pinch_zooms(
    origin: Origin, proxy: Server, new_page: Callable[..., Any]
) -> None:
    """A mouse drag pans the zoomed image; a two-finger pinch zooms around the fingers; a double tap zooms in."""
    origin.files["touch"] = make_image(2000, 1500)
    page = new_page(has_touch=True)
    page.goto(
        frames_page(
            origin,
            proxy,
            "touch",
            '<smart-frame id="t" image-id="touch" style="width:400px"></smart-frame>',
        )
    )
    zoom_ready(page, "t")
    box = page.locator("#t").bounding_box()
    assert box is not None
    x, y = box["x"], box["y"]
    page.mouse.dblclick(x + 200, y + 150)
    view = settled(page, "t")
    assert math.isclose(view["zoom"], 2, rel_tol=1e-3)
    page.mouse.move(x + 250, y + 200)
    page.mouse.down()
    page.mouse.move(x + 150, y + 150, steps=5)
    page.mouse.up()
    dragged = settled(page, "t")
    scale = view["width"] / 400  # original px per CSS px
    assert math.isclose(dragged["x"] - view["x"], 100 * scale, abs_tol=0.5)
    assert math.isclose(dragged["y"] - view["y"], 50 * scale, abs_tol=0.5)
    page.evaluate("document.getElementById('t').resetZoom()")
    assert settled(page, "t")["zoom"] == 1

    cdp = page.context.new_cdp_session(page)

    def touch(kind: str, points: list[tuple[float, float]]) -> None:
        cdp.send(
            "Input.dispatchTouchEvent",
            {
                "type": kind,
                "touchPoints": [
                    {"x": x + px, "y": y + py, "id": i} for i, (px, py) in enumerate(points)
                ],
            },
        )

    touch("touchStart", [(150, 150), (250, 150)])
    for step in range(1, 11):  # fingers 100 px apart spread to 300 px apart: x3
        touch("touchMove", [(150 - 10 * step, 150), (250 + 10 * step, 150)])
    touch("touchEnd", [])
    pinched = settled(page, "t")
    assert math.isclose(pinched["zoom"], 3, rel_tol=0.05)
    # The fingers' midpoint (200, 150) is the frame's centre: the centre of the image stays there.
    assert math.isclose(pinched["x"] + pinched["width"] / 2, 1000, abs_tol=2)
    assert math.isclose(pinched["y"] + pinched["height"] / 2, 750, abs_tol=2)
    page.evaluate("document.getElementById('t').resetZoom()")
    assert settled(page, "t")["zoom"] == 1
    for _ in range(2):
        touch("touchStart", [(100, 100)])
        touch("touchEnd", [])
    assert math.isclose(settled(page, "t")["zoom"], 2, rel_tol=1e-3)
