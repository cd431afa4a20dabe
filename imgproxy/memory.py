"""Keeping the process's resident memory close to what it uses (glibc malloc only).

libvips allocates and frees large pixel buffers from many threads. glibc gives each thread that
contends an arena of its own (up to 8 per core) and keeps freed memory in them, so after a few
big images the process holds hundreds of MB it no longer uses. Fewer arenas, and handing free
pages back after work, keep RSS near the live set. Elsewhere (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # from glibc's malloc.h
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: libc is among them
        libc.mallopt  # noqa: B018 - raises AttributeError when this is not glibc
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


class Memory:
    def __init__(self) -> None:
        self._libc = _libc()

    def limit_arenas(self) -> None:
        """Call before the worker threads start: arenas made earlier stay."""
        if self._libc is not None and not self._libc.mallopt(M_ARENA_MAX, ARENAS):
            log.debug("mallopt(M_ARENA_MAX) refused")

    def trim(self) -> None:
        """Give free heap pages back to the system (blocking for a few ms: run it in a thread)."""
        if self._libc is not None:
            self._libc.malloc_trim(0)
