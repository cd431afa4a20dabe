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

from bench.plan import FILE_PREFIX, HTTP_PREFIX, MIGRATION_PREFIX, ORIGINALS_DIR, Plan

UPSCALE = 8  # the noise is computed at 1/8 size, then resized up
GRAIN_SIGMA = 6.0
QUALITY = 88
MIGRATION_BASE = (4000, 3000)  # migration originals are crops of one such photo, regrained


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
    cold: list[Original]  # figures 2, 3, 4, 5 and 7, served by the http origin
    big: Original  # figure 1 and the tile p99 under load, file origin
    tiles: Original  # the pre-warmed image of the tile p99 under load, file origin
    migration: list[Original]  # figure 6, fetched by URL (`m-*.jpg` from the http origin)


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
        _save(_photo(width, height, seed), path)
        print(
            f"  generated {path.name}: {width}x{height}, {path.stat().st_size / 1e6:.1f} MB "
            f"in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
    return Original(image_id, path, width, height)


def _save(image: pyvips.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    image.jpegsave(str(tmp), Q=QUALITY, keep="none")
    os.replace(tmp, path)


def ensure_migration(count: int, width: int, height: int) -> list[Original]:
    """`count` distinct originals: crops of one generated photo at different offsets, each
    with its own grain (so no two files share bytes). Made once, reused across runs."""
    originals = [
        Original(
            f"{MIGRATION_PREFIX}mig-{width}x{height}-{i:03d}",
            ORIGINALS_DIR / f"{MIGRATION_PREFIX}mig-{width}x{height}-{i:03d}.jpg",
            width,
            height,
        )
        for i in range(count)
    ]
    missing = [o for o in originals if not o.path.exists()]
    if not missing:
        return originals
    ORIGINALS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bw, bh = MIGRATION_BASE
    base = _photo(bw, bh, seed=9).copy_memory()
    for original in missing:
        i = int(original.image_id.rsplit("-", 1)[1])
        left = (i * 137) % (bw - width)
        top = (i * 71) % (bh - height)
        grain = pyvips.Image.gaussnoise(width, height, sigma=GRAIN_SIGMA / 2, mean=0, seed=1000 + i)
        image = (base.crop(left, top, width, height) + grain).cast("uchar")
        _save(image.copy(interpretation="srgb"), original.path)
    print(
        f"  generated {len(missing)} migration originals ({width}x{height}) in "
        f"{time.perf_counter() - started:.1f}s",
        flush=True,
    )
    return originals


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
    migration = ensure_migration(plan.migration_count, *plan.migration_size)
    return TestSet(cold, big, tiles, migration)
