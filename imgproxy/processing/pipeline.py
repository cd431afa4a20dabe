"""The pyvips work: plain synchronous functions (paths in, files out), run through the pool.

Decoding budget for one original: the placeholder and the display base each come from a
shrink-on-load decode (a JPEG decoded at 1/2..1/8 scale costs a fraction of a full decode),
every display width and format is derived from the one in-memory display base, and the
DeepZoom pyramid is the single full-resolution decode, streamed by dzsave.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyvips

from imgproxy.cache.disk import atomic_path, remove, temp_path

# Loaders we accept (SPEC §9). Everything else (SVG, PDF, magick, ...) is refused from the header.
ALLOWED_LOADERS = {
    "jpegload": "jpeg",
    "jpegload_source": "jpeg",
    "pngload": "png",
    "pngload_source": "png",
    "gifload": "gif",
    "gifload_source": "gif",
    "webpload": "webp",
    "webpload_source": "webp",
    "tiffload": "tiff",
    "tiffload_source": "tiff",
    "heifload": "heif",
    "heifload_source": "heif",
}
P = ParamSpec("P")
T = TypeVar("T")
PLACEHOLDER_QUALITY = 60
PLACEHOLDER_MAX_BYTES = 2048


class InvalidImage(Exception):
    """Not a decodable image of an allowed format, or over the limits."""


@dataclass(frozen=True)
class Probe:
    """What the header says, with width/height as displayed (after EXIF orientation)."""

    width: int
    height: int
    pages: int
    has_alpha: bool
    format: str


def configure_vips(cache_ops: int = 0) -> None:
    """Process-wide libvips settings: no untrusted loaders, SVG/PDF off, no operation cache."""
    pyvips.block_untrusted_set(True)
    for op in ("VipsForeignLoadSvg", "VipsForeignLoadPdf", "VipsForeignLoadMagick"):
        try:
            pyvips.operation_block_set(op, True)
        except pyvips.Error:  # not compiled into this libvips: nothing to block
            pass
    # The op cache would keep decoded originals alive between jobs.
    pyvips.cache_set_max(cache_ops)


def _load(src: Path, **options: Any) -> pyvips.Image:
    try:
        return pyvips.Image.new_from_file(str(src), fail_on="error", **options)
    except pyvips.Error as exc:
        raise InvalidImage(_reason(exc)) from exc


def _vips_errors_are_invalid(fn: Callable[P, T]) -> Callable[P, T]:
    """Any libvips failure while decoding or encoding means the image is bad: InvalidImage."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except pyvips.Error as exc:
            raise InvalidImage(_reason(exc)) from exc

    return wrapper


def _reason(exc: pyvips.Error) -> str:
    """The first meaningful line of a libvips error, without the server's file paths."""
    text = (getattr(exc, "detail", None) or str(exc)).strip()
    text = re.sub(r'"/[^"]*"', '"the original"', text)
    text = re.sub(r"(?<![\w.])/[^\s:\"']+", "the original", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else "undecodable image"


@_vips_errors_are_invalid
def probe(src: Path, max_pixels: int) -> Probe:
    """Read only the header: refuse disallowed formats and images over `max_pixels` (all pages)."""
    if not src.exists() or src.stat().st_size == 0:
        raise InvalidImage("empty file")
    image = _load(src)
    loader = str(image.get("vips-loader")) if image.get_typeof("vips-loader") else "unknown"
    fmt = ALLOWED_LOADERS.get(loader)
    if fmt is None:
        raise InvalidImage(f"format not allowed ({loader.removesuffix('load')})")
    pages = int(image.get("n-pages")) if image.get_typeof("n-pages") else 1
    height = image.get("page-height") if image.get_typeof("page-height") else image.height
    pixels = image.width * int(height) * max(pages, 1)
    if pixels > max_pixels:
        raise InvalidImage(
            f"too many pixels: {image.width}x{height}x{pages} pages > limit {max_pixels}"
        )
    orientation = int(image.get("orientation")) if image.get_typeof("orientation") else 1
    width, height_px = image.width, int(height)
    if orientation in (5, 6, 7, 8):
        width, height_px = height_px, width
    return Probe(width, height_px, pages, bool(image.hasalpha()), fmt)


@_vips_errors_are_invalid
def verify(src: Path, fmt: str) -> None:
    """Decode every pixel (every frame of a gif): a truncated or corrupt image is InvalidImage."""
    image = _load(src, access="sequential", **({"n": -1} if fmt == "gif" else {}))
    image.avg()


def _to_srgb(image: pyvips.Image) -> pyvips.Image:
    """Embedded ICC profile -> sRGB; otherwise a plain colourspace conversion when needed."""
    if image.get_typeof("icc-profile-data"):
        try:
            image = image.icc_transform("srgb", embedded=True, intent="perceptual")
        except pyvips.Error:
            pass  # a corrupt profile: fall back to the plain conversion below
    colour_bands = image.bands - (1 if image.hasalpha() else 0)
    target = "b-w" if colour_bands == 1 else "srgb"
    if image.interpretation != target:
        image = image.colourspace(target)
    if image.format != "uchar":
        image = image.cast("uchar")
    return image


def _thumbnail(src: Path, width: int) -> pyvips.Image:
    try:
        image = pyvips.Image.thumbnail(
            str(src), width, height=10_000_000, size="down", fail_on="error"
        )
        image = _to_srgb(image)
        return image
    except pyvips.Error as exc:
        raise InvalidImage(_reason(exc)) from exc


def save(image: pyvips.Image, dest: Path, fmt: str, quality: int) -> None:
    """Write one derivative atomically, without metadata. Derivatives are immutable: one already
    there (built on request while its job was still on other widths) is kept as it is."""
    if dest.exists():
        return
    with atomic_path(dest, replace=False) as tmp:
        try:
            if fmt == "jpg":
                if image.hasalpha():
                    image = image.flatten(background=[255, 255, 255])
                image.jpegsave(str(tmp), Q=quality, keep="none", optimize_coding=True)
            elif fmt == "webp":
                image.webpsave(str(tmp), Q=quality, keep="none", effort=2)
            elif fmt == "avif":
                image.heifsave(
                    str(tmp), Q=max(quality - 25, 30), keep="none", compression="av1", effort=2
                )
            elif fmt == "png":
                image.pngsave(str(tmp), keep="none", compression=6)
            else:
                raise ValueError(f"unknown format {fmt}")
        except pyvips.Error as exc:
            raise InvalidImage(_reason(exc)) from exc


@_vips_errors_are_invalid
def build_placeholder(src: Path, dest: Path, width: int) -> None:
    """The tiny JPEG a cold viewer gets first (always JPEG, alpha flattened, <= 2 KB)."""
    _save_placeholder(_thumbnail(src, width), dest)


def _save_placeholder(image: pyvips.Image, dest: Path) -> None:
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    quality = PLACEHOLDER_QUALITY
    data: bytes = image.jpegsave_buffer(Q=quality, keep="none", optimize_coding=True)
    while len(data) > PLACEHOLDER_MAX_BYTES and quality > 10:
        quality -= 15
        data = image.jpegsave_buffer(Q=quality, keep="none", optimize_coding=True)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


@_vips_errors_are_invalid
def build_renditions(
    src: Path,
    dest_for: Callable[[int, str], Path],
    widths: Sequence[int],
    formats: Sequence[str],
    quality: int,
    encode_in_parallel: bool = False,
    placeholder: tuple[Path, int] | None = None,
) -> None:
    """Every width x format from one shrink-on-load decode held in memory, largest first.

    `encode_in_parallel`: encode the formats of each width on threads of their own (encoders are
    single-threaded); for a viewer waiting while a core is free. `placeholder` (path, width):
    write the placeholder too, from the same decode (when nobody waits for it alone).
    """
    if not widths:
        return
    base = _thumbnail(src, max(widths)).copy_memory()
    if placeholder is not None:
        dest, width = placeholder
        small = base.resize(min(width, base.width) / base.width, kernel="lanczos3")
        _save_placeholder(small, dest)
    for width in sorted(widths, reverse=True):
        image = base if width == base.width else base.resize(width / base.width, kernel="lanczos3")
        if encode_in_parallel and len(formats) > 1:
            image = image.copy_memory()
            with ThreadPoolExecutor(len(formats), thread_name_prefix="vips-encode") as encoders:
                done = [
                    encoders.submit(save, image, dest_for(width, f), f, quality) for f in formats
                ]
                for future in done:
                    future.result()
        else:
            for fmt in formats:
                save(image, dest_for(width, fmt), fmt, quality)


@_vips_errors_are_invalid
def build_rendition(src: Path, dest: Path, width: int, fmt: str, quality: int) -> None:
    """One derivative on request (a format or width added to the config after the build)."""
    save(_thumbnail(src, width), dest, fmt, quality)


@_vips_errors_are_invalid
def build_tiles(
    src: Path,
    version_dir: Path,
    tile_size: int,
    overlap: int,
    tile_format: str,
    quality: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """The DeepZoom pyramid (zoom.dzi + zoom_files/) built in a temporary directory, then renamed."""
    work = temp_path(version_dir / "zoom")
    work.mkdir(parents=True)
    try:
        dzsave(src, work / "zoom", tile_size, overlap, tile_format, quality, "dz", progress)
        fix_dzi_format(work / "zoom.dzi", tile_format)
        # libvips leaves its metadata dump in the tree whatever `keep` says; nobody serves it.
        (work / "zoom_files" / "vips-properties.xml").unlink(missing_ok=True)
        final_tiles = version_dir / "zoom_files"
        remove(final_tiles)
        os.replace(work / "zoom_files", final_tiles)
        os.replace(work / "zoom.dzi", version_dir / "zoom.dzi")
    finally:
        remove(work)


@_vips_errors_are_invalid
def dzsave(
    src: Path,
    base: Path,
    tile_size: int,
    overlap: int,
    tile_format: str,
    quality: int,
    layout: str = "dz",
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write a pyramid at `base` (`base.dzi` + `base_files/`, or an IIIF tree for iiif3)."""
    image = _load(src, access="sequential")
    orientation = int(image.get("orientation")) if image.get_typeof("orientation") else 1
    if orientation != 1:
        # Rotation needs random access; libvips spills big images to a temporary file.
        image = _load(src, access="random").autorot()
    image = _to_srgb(image)
    options: dict[str, Any] = {
        "tile_size": tile_size,
        "overlap": overlap,
        "layout": layout,
        "keep": "none",
    }
    if tile_format == "jpg":
        options["Q"] = quality  # no suffix: libvips then writes JPEG tiles in its fast direct mode
    elif tile_format == "webp":
        options["suffix"] = f".webp[Q={quality},keep=none]"
    else:
        options["suffix"] = ".png[keep=none]"
    if tile_format == "jpg" and image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    if progress is not None:
        image.set_progress(True)
        image.signal_connect("eval", lambda _image, p: progress(int(p.percent)))
    try:
        image.dzsave(str(base), **options)
    except pyvips.Error as exc:
        raise InvalidImage(_reason(exc)) from exc


def fix_dzi_format(dzi: Path, tile_format: str) -> None:
    """Make the descriptor's Format the URL extension (direct-mode JPEG tiles are .jpeg on disk)."""
    text = dzi.read_text(encoding="utf-8")
    fixed = re.sub(r'Format="[a-z]+"', f'Format="{tile_format}"', text, count=1)
    if fixed != text:
        with atomic_path(dzi) as tmp:
            tmp.write_text(fixed, encoding="utf-8")
