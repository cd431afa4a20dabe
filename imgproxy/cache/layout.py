"""Where each cached file lives: one directory per image, one subdirectory per version.

    cache/{shard}/{id}/original                     the pulled original (evicted first)
    cache/{shard}/{id}/v{n}/placeholder.jpg
    cache/{shard}/{id}/v{n}/{width}.{ext}
    cache/{shard}/{id}/v{n}/zoom.dzi, zoom_files/{level}/{col}_{row}.{ext}

IDs are validated before they get here (no '/', no '..'), so joining them is safe.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# libvips writes JPEG tiles in its fast "direct" mode only without a suffix, and then names
# them .jpeg; URLs keep the configured extension.
TILE_DISK_EXT = {"jpg": "jpeg", "png": "png", "webp": "webp"}


class CacheLayout:
    """Paths of every cached file, derived from (id, version, ...) alone: no lookups."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def image_dir(self, image_id: str) -> Path:
        shard = hashlib.blake2s(image_id.encode(), digest_size=1).hexdigest()
        return self.root / shard / image_id

    def original(self, image_id: str) -> Path:
        return self.image_dir(image_id) / "original"

    def version_dir(self, image_id: str, version: int) -> Path:
        return self.image_dir(image_id) / f"v{version}"

    def placeholder(self, image_id: str, version: int) -> Path:
        return self.version_dir(image_id, version) / "placeholder.jpg"

    def rendition(self, image_id: str, version: int, width: int, ext: str) -> Path:
        return self.version_dir(image_id, version) / f"{width}.{ext}"

    def dzi(self, image_id: str, version: int) -> Path:
        return self.version_dir(image_id, version) / "zoom.dzi"

    def tiles_dir(self, image_id: str, version: int) -> Path:
        return self.version_dir(image_id, version) / "zoom_files"

    def tile(
        self, image_id: str, version: int, level: int, col: int, row: int, tile_format: str
    ) -> Path:
        ext = TILE_DISK_EXT[tile_format]
        return self.tiles_dir(image_id, version) / str(level) / f"{col}_{row}.{ext}"
