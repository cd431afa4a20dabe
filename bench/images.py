"""Test originals: photo-like JPEGs made with pyvips once, then reused across runs.

Content is a few octaves of Perlin noise per channel plus a Worley texture, upscaled (so
large areas vary smoothly, as in a photo), plus fine Gaussian grain so the JPEG compresses
like a real photograph (~0.25 bytes per pixel: a 24 MPix image is 5-7 MB).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyvips

from bench.plan import FILE_PREFIX, HTTP_PREFIX, ORIGINALS_DIR, Plan

UPSCALE = 8  # the noise is computed at 1/8 size, then resized up
GRAIN_SIGMA = 6.0
QUALITY = 88


@dataclass(frozen=True)
class Original:
    image_id: str
    path: Path
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


@dataclass(frozen=True)
class TestSet:
    cold: list[Original]  # figure 1, served by the http origin
    big: Original  # figures 2 and 3, file origin
    tiles: Original  # figure 3's pre-warmed image, file origin


def _photo(width: int, height: int, seed: int) -> pyvips.Image:
    small_w, small_h = -(-width // UPSCALE), -(-height // UPSCALE)
    texture = pyvips.Image.worley(small_w, small_h, cell_size=24, seed=seed) * 2.0
    bands = []
    for band in range(3):
        acc: pyvips.Image | None = None
        for octave, cell in enumerate((256, 64, 16, 4)):
            noise = pyvips.Image.perlin(
                small_w, small_h, cell_size=cell, seed=seed * 31 + band * 7 + octave
            )
            noise = noise * (1.0 / 1.6**octave)
            acc = noise if acc is None else acc + noise
        assert acc is not None
        bands.append(acc * 150 + 80 + texture)
    image = bands[0].bandjoin(bands[1:]).copy_memory()
    image = image.resize(UPSCALE, kernel="linear").crop(0, 0, width, height)
    image = image + pyvips.Image.gaussnoise(width, height, sigma=GRAIN_SIGMA, mean=0, seed=seed)
    return image.cast("uchar").copy(interpretation="srgb")


def ensure(image_id: str, width: int, height: int, seed: int) -> Original:
    """The original `image_id`.jpg, generated (atomically) unless already there."""
    path = ORIGINALS_DIR / f"{image_id}.jpg"
    if not path.exists():
        ORIGINALS_DIR.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        tmp = path.with_name(f".{path.name}.tmp")
        _photo(width, height, seed).jpegsave(str(tmp), Q=QUALITY, keep="none")
        os.replace(tmp, path)
        print(
            f"  generated {path.name}: {width}x{height}, {path.stat().st_size / 1e6:.1f} MB "
            f"in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
    return Original(image_id, path, width, height)


def ensure_all(plan: Plan) -> TestSet:
    cw, ch = plan.cold_size
    bw, bh = plan.big_size
    tw, th = plan.tiles_size
    cold = [
        ensure(f"{HTTP_PREFIX}cold-{cw}x{ch}-{i:02d}", cw, ch, seed=100 + i)
        for i in range(plan.cold_count)
    ]
    big = ensure(f"{FILE_PREFIX}big-{bw}x{bh}", bw, bh, seed=7)
    tiles = ensure(f"{FILE_PREFIX}tiles-{tw}x{th}", tw, th, seed=8)
    return TestSet(cold, big, tiles)
