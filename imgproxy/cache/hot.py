"""Hot small files in memory: tiles and small renditions, served without a syscall.

Versioned files are immutable, so their bytes can be kept as long as memory allows; an image
that is deleted or evicted is forgotten here too, so nothing is served after it is gone.
A file is read on the event loop only when it is small (a page-cache read of a few KB costs
less than the thread hop aiohttp's FileResponse makes for its stat); larger files go through
FileResponse and sendfile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache

SMALL = 256 * 1024  # bytes: above this, a file is streamed with sendfile instead


@dataclass(frozen=True)
class HotFile:
    body: bytes
    etag: str


class _Files(LRUCache[Path, HotFile]):
    """An LRU that tells its owner which paths it pushes out."""

    def __init__(self, max_bytes: int, index: dict[str, set[Path]]) -> None:
        super().__init__(maxsize=max(max_bytes, 1), getsizeof=lambda f: len(f.body) + 200)
        self._index = index

    def popitem(self) -> tuple[Path, HotFile]:
        path, hot = super().popitem()
        image_id = _image_of(path)
        paths = self._index.get(image_id)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._index[image_id]
        return path, hot


def _image_of(path: Path) -> str:
    """The image ID in a cache path: cache/{shard}/{id}/v{n}/..."""
    for parent in path.parents:
        if parent.name.startswith("v") and parent.name[1:].isdigit():
            return parent.parent.name
    return ""


class HotFiles:
    def __init__(self, max_bytes: int) -> None:
        self._by_image: dict[str, set[Path]] = {}
        self._files = _Files(max_bytes, self._by_image)
        self.enabled = max_bytes > 0

    def get(self, image_id: str, path: Path) -> HotFile | None:
        """The file's bytes from memory, or read now if small; None when absent or large."""
        hot = self._files.get(path)
        if hot is not None:
            return hot
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                if stat.st_size > SMALL:
                    return None
                body = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        hot = HotFile(body, f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"')
        if self.enabled and len(body) + 200 <= self._files.maxsize:
            self._by_image.setdefault(image_id, set()).add(path)
            self._files[path] = hot
        return hot

    def forget(self, image_id: str) -> None:
        """Drop every file of an image (deleted, evicted, or an old version retired)."""
        for path in self._by_image.pop(image_id, ()):
            self._files.pop(path, None)
