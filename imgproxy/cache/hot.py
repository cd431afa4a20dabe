"""Hot files in memory: tiles, renditions and descriptors, served without a syscall.

Versioned files are immutable, so their bytes can be kept as long as memory allows; an image
that is deleted or evicted is forgotten here too, so nothing is served after it is gone.
A file is read on the event loop only when it is small (a page-cache read of a few KB costs
less than a thread hop); up to LARGE it is read once in a thread; larger ones go through
FileResponse and sendfile.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K")
V = TypeVar("V")

SMALL = 256 * 1024  # bytes: up to this, a file is read on the loop (cheaper than a thread hop)
LARGE = 4 * 1024 * 1024  # bytes: up to this, a file is read in a thread and kept; above, sendfile


@dataclass(frozen=True)
class HotFile:
    body: bytes
    etag: str


class ImageLRU(Generic[K, V]):
    """A byte-bounded LRU whose entries belong to images, so that all of an image's entries can
    be dropped at once (deleted, evicted, or an old version retired)."""

    def __init__(self, max_bytes: int, size_of: Callable[[V], int]) -> None:
        self._by_image: dict[str, set[K]] = {}
        self._entries = _Entries[K, V](max(max_bytes, 1), size_of, self._by_image)
        self.max_bytes = max_bytes

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, image_id: str, key: K, value: V) -> None:
        if self.max_bytes <= 0 or self._entries.getsizeof((image_id, value)) > self.max_bytes:
            return
        self._by_image.setdefault(image_id, set()).add(key)
        self._entries[key] = (image_id, value)

    def forget(self, image_id: str) -> None:
        for key in self._by_image.pop(image_id, ()):
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class _Entries(LRUCache[K, tuple[str, V]]):
    """The LRU underneath, keeping the per-image index right as it pushes entries out."""

    def __init__(
        self, max_bytes: int, size_of: Callable[[V], int], index: dict[str, set[K]]
    ) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda entry: size_of(entry[1]))
        self._index = index

    def popitem(self) -> tuple[K, tuple[str, V]]:
        key, entry = super().popitem()
        keys = self._index.get(entry[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._index[entry[0]]
        return key, entry


def _read(path: Path, limit: int) -> HotFile | None:
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            if stat.st_size > limit:
                return None
            body = handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return HotFile(body, f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"')


class HotFiles:
    def __init__(self, max_bytes: int) -> None:
        self._files = ImageLRU[Path, HotFile](max_bytes, lambda f: len(f.body) + 200)

    def get(self, image_id: str, path: Path) -> HotFile | None:
        """The file's bytes from memory, or read now if small; None when absent or larger."""
        hot = self._files.get(path)
        if hot is not None:
            return hot
        return self._keep(image_id, path, _read(path, SMALL))

    async def load(self, image_id: str, path: Path) -> HotFile | None:
        """`get` for files up to LARGE, read in a thread; None when absent or larger."""
        hot = self._files.get(path)
        if hot is not None:
            return hot
        return self._keep(image_id, path, await asyncio.to_thread(_read, path, LARGE))

    def _keep(self, image_id: str, path: Path, hot: HotFile | None) -> HotFile | None:
        if hot is not None:
            self._files.put(image_id, path, hot)
        return hot

    def forget(self, image_id: str) -> None:
        """Drop every file of an image (deleted, evicted, or an old version retired)."""
        self._files.forget(image_id)
