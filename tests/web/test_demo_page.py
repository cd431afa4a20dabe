"""The /demo page on the embedded demo, from a cold cache, with screenshots kept as artifacts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgproxy.demo import DEMO_IMAGES
from tests.web.conftest import ARTIFACTS, free_port, start_server, stop_server

ALL_SHOWN = """() => [...document.querySelectorAll('smart-frame')]
    .every(f => f.stage === 'display' || f.stage === 'error')"""


def test_demo_page_shows_every_demo_image(tmp_path: Path, new_page: Callable[..., Any]) -> None:
    """/demo on a cold cache shows every demo image (the 100 MPix one included) in <smart-frame>s with stage badges; screenshots are saved under tests/artifacts/."""
    port = free_port()
    env = {"IMGPROXY_SERVER__PORT": str(port), "IMGPROXY_STORAGE__DIR": str(tmp_path / "var")}
    server = start_server([], tmp_path / "demo.log", env, port)
    try:
        ARTIFACTS.mkdir(exist_ok=True)
        page = new_page(width=1280, height=900)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{server.url}/demo")
        ids = page.eval_on_selector_all(
            "smart-frame", "fs => fs.map(f => f.getAttribute('image-id'))"
        )
        assert {image.id for image in DEMO_IMAGES} <= set(ids)
        page.wait_for_function(ALL_SHOWN, timeout=60_000)
        for image in DEMO_IMAGES:
            frame = page.locator(f'smart-frame[image-id="{image.id}"]')
            assert frame.get_attribute("stage") == "display", image.id
            ratio = frame.evaluate("f => f.clientWidth / f.clientHeight")
            assert abs(ratio - image.width / image.height) < 0.02, image.id
            badge = page.locator(f'.badge[data-for="{image.id}"]')
            assert badge.inner_text() in ("display", "zoom ready")
        page.wait_for_function(
            "() => [...document.querySelectorAll('smart-frame[stage=display]')]"
            ".every(f => f.getAttribute('zoom') === 'ready')",
            timeout=60_000,
        )
        page.screenshot(path=str(ARTIFACTS / "demo-desktop.png"), full_page=True)
        # Hyper Zoom on the 100 MPix image: keyboard zoom, tiles of the level in view.
        page.focus('smart-frame[image-id="demo-huge"]')
        for _ in range(3):
            page.keyboard.press("+")
        page.wait_for_function(
            "() => { const v = document.querySelector('smart-frame[image-id=demo-huge]').view;"
            " return v.zoom > 3 && v.level !== null && !v.busy }"
        )
        page.screenshot(path=str(ARTIFACTS / "demo-zoomed.png"), full_page=True)

        phone = new_page(width=390, height=844, dpr=2, is_mobile=True, has_touch=True)
        phone.on("pageerror", lambda e: errors.append(str(e)))
        phone.goto(f"{server.url}/demo")
        phone.wait_for_function(ALL_SHOWN, timeout=60_000)
        phone.screenshot(path=str(ARTIFACTS / "demo-phone.png"), full_page=True)
        assert errors == []
    finally:
        stop_server(server)
