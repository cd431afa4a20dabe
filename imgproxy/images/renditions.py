"""Renditions on request: a configured width/format missing from the cache is built once, however
many requests ask for it at the same moment."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from imgproxy.cache.layout import CacheLayout
from imgproxy.images.negotiation import rendition_formats, rendition_widths
from imgproxy.images.service import ImageService
from imgproxy.images.singleflight import SingleFlight
from imgproxy.metadata.store import ImageRecord, MetadataStore
from imgproxy.processing import pipeline
from imgproxy.processing.pool import ProcessingPool
from imgproxy.settings import Settings
from imgproxy.web.errors import ApiError


class Renditions:
    def __init__(
        self,
        settings: Settings,
        store: MetadataStore,
        layout: CacheLayout,
        pool: ProcessingPool,
        service: ImageService,
        measure: Callable[[str], Awaitable[None]],
    ) -> None:
        self.measure = measure
        self.settings = settings
        self.store = store
        self.layout = layout
        self.pool = pool
        self.service = service
        self._building: SingleFlight[Path, None] = SingleFlight()

    async def ensure(self, record: ImageRecord, version: int, width: int, fmt: str) -> Path:
        """The rendition's path, building it first when it is not on disk."""
        path = self.layout.rendition(record.id, version, width, fmt)
        if path.exists():
            return path
        await self._building.run(path, lambda: self._build(record.id, version, width, fmt, path))
        return path

    async def ensure_versioned(
        self, record: ImageRecord, version: int, width: int, fmt: str
    ) -> Path:
        """Check that (version, width, format) is one this image offers, then ensure it."""
        current = await self.store.get_version(record.id, version)
        if current is None:
            raise ApiError(404, f"image {record.id} has no version {version}")
        if current.width is None:
            raise ApiError(503, f"image {record.id} is not processed yet", {"Retry-After": "1"})
        widths = rendition_widths(current.width, self.settings.processing.widths)
        if width not in widths:
            raise ApiError(404, f"image {record.id} has no width {width} (widths: {widths})")
        formats = rendition_formats(self.settings.processing.formats, current.has_alpha)
        if fmt not in formats:
            raise ApiError(404, f"image {record.id} is not offered as {fmt} (formats: {formats})")
        if not current.display:
            waited = await self.service.wait_for(
                record.id,
                lambda r: r.version >= version and r.display,
                self.settings.viewer.first_view_wait,
            )
            path = self.layout.rendition(record.id, version, width, fmt)
            if path.exists():
                return path
            if waited is None or not (waited.version >= version and waited.display):
                raise ApiError(
                    503, f"the display stage of {record.id} is not built yet", {"Retry-After": "1"}
                )
        return await self.ensure(record, version, width, fmt)

    async def _build(self, image_id: str, version: int, width: int, fmt: str, path: Path) -> None:
        source = self._source(image_id, version, width)
        if source is None:
            raise ApiError(
                503, f"the original of {image_id} is not cached; try again", {"Retry-After": "5"}
            )
        quality = self.settings.processing.quality
        try:
            await self.pool.run(pipeline.build_rendition, source, path, width, fmt, quality)
        except pipeline.InvalidImage as exc:
            raise ApiError(415, f"image {image_id}: invalidImage ({exc})") from exc
        await self.measure(image_id)

    def _source(self, image_id: str, version: int, width: int) -> Path | None:
        """The original when cached, else the smallest built rendition at least `width` wide."""
        original = self.layout.original(image_id)
        if original.exists():
            return original
        vdir = self.layout.version_dir(image_id, version)
        best: tuple[int, Path] | None = None
        for candidate in vdir.glob("*.*") if vdir.exists() else ():
            stem = candidate.stem
            if stem.isdigit() and int(stem) >= width and (best is None or int(stem) < best[0]):
                best = (int(stem), candidate)
        return best[1] if best else None
