"""Figure 6's reference: a bare pyvips loop producing what the server builds for each image
(placeholder, every rendition width and format, DeepZoom pyramid), `workers` wide, in as
many processes (the table's reference) or threads of one process (a detail: the server's own
model, where the threads share one interpreter).

`python -m bench.migration_ref OUT_DIR WORKERS [procs|threads] < list-of-originals` prints
one JSON object:
`{"seconds", "cpu_seconds", "images", "files", "bytes"}`. The parameters (widths, formats,
quality, placeholder width, tile size and overlap) are the server's defaults, read from
imgproxy.settings, and the width rule is the server's; the pyvips calls are written out here.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pyvips

from imgproxy.images.negotiation import rendition_formats, rendition_widths
from imgproxy.settings import ProcessingSettings

SETTINGS = ProcessingSettings()
PLACEHOLDER_QUALITY = 60
PLACEHOLDER_MAX_BYTES = 2048
HUGE_HEIGHT = 10_000_000


def _init() -> None:
    pyvips.cache_set_max(0)


def _save(image: pyvips.Image, path: Path, fmt: str) -> None:
    if fmt == "jpg":
        image.jpegsave(str(path), Q=SETTINGS.quality, keep="none", optimize_coding=True)
    elif fmt == "webp":
        image.webpsave(str(path), Q=SETTINGS.quality, keep="none", effort=2)
    elif fmt == "avif":
        image.heifsave(
            str(path), Q=max(SETTINGS.quality - 25, 30), keep="none", compression="av1", effort=2
        )
    else:
        image.pngsave(str(path), keep="none", compression=6)


def build(src: str, out_dir: str) -> None:
    """One image: placeholder, renditions from one shrink-on-load decode, then dzsave."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thumb = pyvips.Image.thumbnail(src, SETTINGS.placeholder_width, height=HUGE_HEIGHT, size="down")
    quality = PLACEHOLDER_QUALITY
    data: bytes = thumb.jpegsave_buffer(Q=quality, keep="none", optimize_coding=True)
    while len(data) > PLACEHOLDER_MAX_BYTES and quality > 10:
        quality -= 15
        data = thumb.jpegsave_buffer(Q=quality, keep="none", optimize_coding=True)
    (out / "placeholder.jpg").write_bytes(data)

    header = pyvips.Image.new_from_file(src)
    widths = rendition_widths(header.width, SETTINGS.widths)
    formats = rendition_formats(SETTINGS.formats, bool(header.hasalpha()))
    base = pyvips.Image.thumbnail(src, max(widths), height=HUGE_HEIGHT, size="down").copy_memory()
    for width in sorted(widths, reverse=True):
        image = base if width == base.width else base.resize(width / base.width, kernel="lanczos3")
        for fmt in formats:
            _save(image, out / f"{width}.{fmt}", fmt)

    tiles = pyvips.Image.new_from_file(src, access="sequential")
    tiles.dzsave(
        str(out / "zoom"),
        tile_size=SETTINGS.tile_size,
        overlap=SETTINGS.tile_overlap,
        Q=SETTINGS.quality,
        keep="none",
    )
    (out / "zoom_files" / "vips-properties.xml").unlink(missing_ok=True)


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _files(root: Path) -> tuple[int, int]:
    count = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            count += 1
            size += (Path(dirpath) / name).stat().st_size
    return count, size


def main(argv: list[str]) -> None:
    out_root, workers = Path(argv[0]), int(argv[1])
    mode = argv[2] if len(argv) > 2 else "procs"
    sources = [line.strip() for line in sys.stdin if line.strip()]
    _init()
    cpu = _cpu()
    started = time.perf_counter()
    pool: Executor = (
        ThreadPoolExecutor(max_workers=workers)
        if mode == "threads"
        else ProcessPoolExecutor(max_workers=workers, initializer=_init)
    )
    with pool:
        jobs = [pool.submit(build, src, str(out_root / Path(src).stem)) for src in sources]
        for job in jobs:
            job.result()
    seconds = time.perf_counter() - started
    files, size = _files(out_root)
    result = {
        "seconds": seconds,
        "cpu_seconds": _cpu() - cpu,
        "images": len(sources),
        "files": files,
        "bytes": size,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
