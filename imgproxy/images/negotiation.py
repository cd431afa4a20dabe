"""Choosing what to serve: rendition widths of an image, the width for a request, the format for an Accept."""

from __future__ import annotations

from collections.abc import Sequence


def rendition_widths(original_width: int, configured: Sequence[int]) -> list[int]:
    """Widths built for an image: configured ones not above the original, plus the original's own
    width when it is below the largest configured one (never upscaled)."""
    widths = sorted({w for w in configured if w <= original_width})
    if original_width < max(configured) and original_width not in widths:
        widths.append(original_width)
    return widths


def rendition_formats(configured: Sequence[str], has_alpha: bool) -> list[str]:
    """Formats built for an image: the configured ones plus the universal fallback (jpg, or png
    for an image with alpha, where png replaces jpg)."""
    fallback = "png" if has_alpha else "jpg"
    formats = [f for f in configured if not (has_alpha and f == "jpg")]
    if fallback not in formats:
        formats.append(fallback)
    return formats


def choose_width(widths: Sequence[int], css_width: float, dpr: float) -> int:
    """The smallest width >= css_width * dpr, else the largest."""
    wanted = css_width * dpr
    for width in sorted(widths):
        if width >= wanted:
            return width
    return max(widths)


def _accepted(accept: str) -> set[str]:
    """Media types the client accepts with q > 0 (wildcards kept as written)."""
    types: set[str] = set()
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        quality = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            types.add(media)
    return types


def choose_format(accept: str | None, formats: Sequence[str], has_alpha: bool) -> str:
    """avif if accepted and built, else webp if accepted and built, else jpg (png with alpha).

    Only explicit `image/avif` / `image/webp` count: browsers that send `*/*` alone may not decode them.
    """
    accepted = _accepted(accept or "")
    if "image/avif" in accepted and "avif" in formats:
        return "avif"
    if "image/webp" in accepted and "webp" in formats:
        return "webp"
    return "png" if has_alpha else "jpg"


CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "avif": "image/avif",
    "png": "image/png",
}
