"""The references the bench installs itself when missing: nginx and wrk from Debian's packages
(apt-get, when root), thumbor from PyPI into its own venv under bench/work/.

Each helper returns what it found (a version string) or raises Unavailable with the reason,
so a figure whose reference cannot be had says exactly why and still measures our side.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.plan import WORK_DIR

THUMBOR_VENV = WORK_DIR / "thumbor-venv"
THUMBOR_VERSIONS = ("7.8.0", "7.7.7")  # the 7.8, else the last 7.7
APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk"}  # command -> Debian package
INSTALL_TIMEOUT = 300


class Unavailable(Exception):
    """A reference that is not installed and could not be installed (the message says why)."""


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _run(argv: list[str], timeout: float = INSTALL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )


def ensure_apt_tools() -> list[str]:
    """Install nginx and wrk from apt when missing; returns a note per installed package."""
    missing = [pkg for cmd, pkg in APT_PACKAGES.items() if shutil.which(cmd) is None]
    if not missing:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return [f"not installed and cannot apt-get install (not root or no apt): {missing}"]
    try:
        update = _run(["apt-get", "update"])
        if update.returncode != 0:
            return [f"apt-get update failed: {_tail(update.stderr)}"]
        done = _run(["apt-get", "install", "-y", "--no-install-recommends", *missing])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"apt-get install {' '.join(missing)} failed: {exc}"]
    if done.returncode != 0:
        return [f"apt-get install {' '.join(missing)} failed: {_tail(done.stderr)}"]
    return [f"installed {', '.join(missing)} with apt-get"]


def tool_version(argv: list[str]) -> str:
    """The first line a tool prints about its version ('' when it cannot be run)."""
    try:
        done = _run(argv, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else ""


def thumbor_bin() -> Path:
    return THUMBOR_VENV / "bin" / "thumbor"


def _base_python() -> str:
    """A python3 that can make a venv (not the bench's own venv interpreter)."""
    base = getattr(sys, "_base_executable", "") or ""
    return base if base and Path(base).exists() else shutil.which("python3") or sys.executable


def ensure_thumbor() -> str:
    """thumbor in bench/work/thumbor-venv (made on first use); returns its version line."""
    version = tool_version([str(thumbor_bin()), "--version"]) if thumbor_bin().exists() else ""
    if version.startswith("Thumbor v"):
        return version
    shutil.rmtree(THUMBOR_VENV, ignore_errors=True)
    print("  installing thumbor into bench/work/thumbor-venv (once)", flush=True)
    problems: list[str] = []
    try:
        made = _run([_base_python(), "-m", "venv", str(THUMBOR_VENV)])
        if made.returncode != 0:
            raise Unavailable(f"python3 -m venv failed: {_tail(made.stderr)}")
        pip = str(THUMBOR_VENV / "bin" / "pip")
        for pin in THUMBOR_VERSIONS:
            done = _run([pip, "install", "--quiet", f"thumbor=={pin}"])
            if done.returncode == 0:
                break
            problems.append(f"thumbor=={pin}: {_tail(done.stderr, 3)}")
        else:
            raise Unavailable("pip install failed: " + "; ".join(problems))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"installing thumbor failed: {exc}") from exc
    version = tool_version([str(thumbor_bin()), "--version"])
    if not version.startswith("Thumbor v"):
        raise Unavailable(f"thumbor installed but `thumbor --version` says {version!r}")
    return version
