"""Atomic file writes and clean-up of what a crash leaves behind.

Every cache file is written under a temporary name in its final directory and renamed into
place, so a reader sees either nothing or the whole file.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"


def temp_path(final: Path) -> Path:
    """A fresh temporary name beside `final`, keeping its suffix (pyvips picks savers by it)."""
    return final.with_name(f"{TMP_PREFIX}{secrets.token_hex(6)}-{final.name}")


@contextmanager
def atomic_path(final: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to `final` on success, remove it on failure.

    `replace=False`: an immutable file: when `final` appeared meanwhile (two builds of one
    derivative raced), the first one stays, so a URL never changes bytes once served.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        if replace:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)  # unlike rename, fails when `final` exists
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: last writer wins
                os.replace(tmp, final)
                return
            os.unlink(tmp)
    except BaseException:
        remove(tmp)
        raise


def write_bytes(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def remove(path: Path) -> None:
    """Remove a file or a directory tree; absent is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def remove_temporaries(root: Path) -> int:
    """Delete every temporary file or directory under `root` (start-up: a crash left them)."""
    removed = 0
    if not root.exists():
        return 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [d for d in dirnames if d.startswith(TMP_PREFIX)]:
            shutil.rmtree(Path(dirpath) / name, ignore_errors=True)
            dirnames.remove(name)
            removed += 1
        for name in filenames:
            if name.startswith(TMP_PREFIX):
                (Path(dirpath) / name).unlink(missing_ok=True)
                removed += 1
    return removed


def tree_size(root: Path) -> int:
    """Bytes used by the files under `root`."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total
