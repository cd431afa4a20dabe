"""`file` origin: a local folder; `root` + `path` template, never escaping `root`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from imgproxy.origins.base import NotFound, PatternMixin, Source, Unavailable
from imgproxy.settings import OriginSettings

CHUNK = 1 << 20


class FileOrigin(PatternMixin):
    def __init__(self, settings: OriginSettings) -> None:
        self._init_pattern(settings)
        self.root = Path(settings.root).resolve()

    def _locate(self, image_id: str) -> Path:
        for relative in self.candidates(self.settings.path, image_id):
            path = (self.root / relative).resolve()
            # resolve() follows symlinks: a link out of root counts as absent, not as a file.
            if not path.is_relative_to(self.root):
                continue
            if path.is_file():
                return path
        raise NotFound(image_id)

    def _walk(self) -> list[str]:
        """Every file under root as a relative POSIX path (symlinks out of root skipped)."""
        names: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if path.resolve().is_relative_to(self.root) and path.is_file():
                    names.append(path.relative_to(self.root).as_posix())
        return names

    async def list_ids(self) -> AsyncIterator[str]:
        """The IDs of the collection: a directory walk mapped back through the path template."""
        for name in await asyncio.to_thread(self._walk):
            image_id = self.id_from_name(self.settings.path, name)
            if image_id is not None:
                yield image_id

    @asynccontextmanager
    async def open(self, image_id: str) -> AsyncIterator[Source]:
        path = await asyncio.to_thread(self._locate, image_id)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError as exc:
            raise NotFound(image_id) from exc
        except OSError as exc:
            raise Unavailable(f"cannot read {path.name}: {exc.strerror}", transient=False) from exc
        try:
            size = await asyncio.to_thread(lambda: path.stat().st_size)

            async def chunks() -> AsyncIterator[bytes]:
                while data := await asyncio.to_thread(handle.read, CHUNK):
                    yield data

            yield Source(location=f"file:{path.name}", size=size, chunks=chunks(), path=path)
        finally:
            handle.close()
