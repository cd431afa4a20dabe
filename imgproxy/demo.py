"""The embedded demo: generated sample images and the settings that serve them.

`imgproxy serve` without `-c` runs this: the images are made once under the data directory
(the 100 MPix one takes a few seconds) and served through an ordinary `file` origin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyvips

from imgproxy.settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoImage:
    id: str
    width: int
    height: int
    ext: str
    title: str


DEMO_IMAGES = (
    DemoImage("demo-small", 640, 480, ".jpg", "640 × 480 JPEG"),
    DemoImage("demo-photo", 6000, 4000, ".jpg", "6000 × 4000 JPEG (24 MPix)"),
    DemoImage("demo-alpha", 1200, 900, ".png", "1200 × 900 PNG with transparency"),
    DemoImage("demo-huge", 12288, 8192, ".jpg", "12288 × 8192 JPEG (100 MPix)"),
)


def _texture(width: int, height: int, seed: int) -> pyvips.Image:
    """A colourful smooth field with a fine grid and coordinates: detail that rewards zooming."""
    small_w, small_h = max(width // 16, 8), max(height // 16, 8)
    bands = [
        pyvips.Image.perlin(small_w, small_h, cell_size=max(small_w // 6, 4), seed=seed + i)
        .linear(110, 128)
        .cast("uchar")
        for i in range(3)
    ]
    colour = bands[0].bandjoin(bands[1:]).resize(width / small_w, vscale=height / small_h)
    colour = colour.crop(0, 0, width, height).copy(interpretation="srgb")
    xy = pyvips.Image.xyz(width, height)
    grid = ((xy[0] % 256) < 2) | ((xy[1] % 256) < 2)
    fine = ((xy[0] % 32) < 1) | ((xy[1] % 32) < 1)
    image = grid.ifthenelse([20, 20, 20], fine.ifthenelse([240, 240, 240], colour, blend=False))
    label = pyvips.Image.text(
        f"<b>imgproxy demo</b>  {width} × {height}", dpi=max(width // 20, 72), rgba=False
    )
    if label.width < width and label.height < height:
        ink = label.new_from_image([255, 255, 255]).bandjoin(label)
        image = image.composite2(
            ink.copy(interpretation="srgb"),
            "over",
            x=(width - label.width) // 2,
            y=(height - label.height) // 2,
        ).flatten()
    return image.cast("uchar")


def make_demo_image(spec: DemoImage, path: Path) -> None:
    image = _texture(spec.width, spec.height, seed=spec.width)
    tmp = path.with_name(f".tmp-{path.name}")
    if spec.ext == ".png":
        xy = pyvips.Image.xyz(spec.width, spec.height)
        cx, cy = spec.width / 2, spec.height / 2
        dist = ((xy[0] - cx) ** 2 + (xy[1] - cy) ** 2) ** 0.5
        alpha = (255 - dist * (255 / (min(cx, cy)))).cast("uchar")
        image.bandjoin(alpha).pngsave(str(tmp), compression=6)
    else:
        image.jpegsave(str(tmp), Q=88)
    tmp.replace(path)


def ensure_demo_images(root: Path) -> Path:
    """Generate the demo originals under `root` once; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    for spec in DEMO_IMAGES:
        path = root / f"{spec.id}{spec.ext}"
        if not path.exists():
            log.info("generating demo image %s (%s)", spec.id, spec.title)
            make_demo_image(spec, path)
    return root


def demo_settings(data_dir: str = "./var") -> Settings:
    """The embedded default configuration: one `file` origin over the generated images."""
    root = Path(data_dir) / "demo-originals"
    return load_settings(
        overrides={
            "storage": {"dir": data_dir},
            "origins": [
                {
                    "name": "demo",
                    "type": "file",
                    "root": str(root),
                    "path": "{id}",
                    "extensions": [".jpg", ".png"],
                }
            ],
        }
    )
