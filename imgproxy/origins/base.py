"""The origin interface: open an image ID as a byte stream, or say distinctly that it is not there.

An origin is one small object with a name, `accepts(id)` (its `id_pattern`) and `open(id)`,
an async context manager yielding a Source. Failures are one of two kinds:
NotFound (try the next origin; finally `originalNotFound`) and Unavailable (`uploadError`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from imgproxy.settings import OriginSettings


class NotFound(Exception):
    """The origin has no file for this ID."""


class Unavailable(Exception):
    """The origin could not be reached or the transfer failed; `transient` ones may be retried."""

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class TooLarge(Exception):
    """The source is over `limits.max_source_bytes`."""


@dataclass
class Source:
    """An opened original: where it was found (safe to log), its size if known, and its bytes.

    `path` is set by local origins so the copy into the cache can skip the event loop.
    """

    location: str
    size: int | None
    chunks: AsyncIterator[bytes]
    path: Path | None = None


class Origin(Protocol):
    @property
    def name(self) -> str: ...

    def accepts(self, image_id: str) -> bool: ...

    def open(self, image_id: str) -> AbstractAsyncContextManager[Source]: ...


class Listable(Protocol):
    """An origin that can enumerate its collection (for `imgproxy warm`)."""

    def list_ids(self) -> AsyncIterator[str]: ...


class PatternMixin:
    """`accepts()` from `id_pattern` (whole-ID match) and the template+extension expansion."""

    settings: OriginSettings
    _pattern: re.Pattern[str] | None

    def _init_pattern(self, settings: OriginSettings) -> None:
        self.settings = settings
        self._pattern = settings.id_regex()

    @property
    def name(self) -> str:
        return self.settings.name

    def accepts(self, image_id: str) -> bool:
        return self._pattern is None or self._pattern.fullmatch(image_id) is not None

    def id_from_name(self, template: str, name: str) -> str | None:
        """The ID whose expansion of `template` (+ one of the extensions) is `name`, if any.

        The inverse of `candidates`, used to turn a listing (directory walk, S3 keys, FTP
        names) into IDs; names that do not fit the template, or give an invalid ID, are None.
        """
        from imgproxy.images.ids import is_valid_id  # ids imports nothing from origins

        before, _, after = template.partition("{id}")
        extensions = self.settings.extensions or ("",)
        for ext in extensions:
            suffix = after + ext
            if (
                name.startswith(before)
                and name.endswith(suffix)
                and len(name) > len(before) + len(suffix)
            ):
                image_id = name[len(before) : len(name) - len(suffix)]
                if is_valid_id(image_id) and self.accepts(image_id):
                    return image_id
        return None

    def candidates(self, template: str, image_id: str) -> list[str]:
        """The template with {id} filled, then once per configured extension, in order."""
        base = template.replace("{id}", image_id)
        if not self.settings.extensions:
            return [base]
        return [base + ext for ext in self.settings.extensions]
