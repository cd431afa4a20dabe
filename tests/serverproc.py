"""The real server and CLI as subprocesses, as a user runs them (tests that kill or measure it)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The environment without a developer's IMGPROXY_* overrides, unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def write_config(tmp_path: Path, origin_url: str, port: int) -> Path:
    """A config with one http origin at `origin_url` (loopback allowed) and small widths."""
    config = tmp_path / "imgproxy.toml"
    config.write_text(
        f"""
[server]
port = {port}
public_url = "http://127.0.0.1:{port}"

[storage]
dir = "{tmp_path / "data"}"

[processing]
widths = [320, 640]

[limits]
read_timeout = 20.0
allow_private_networks = true

[[origins]]
name = "web"
type = "http"
url = "{origin_url}{{id}}"
"""
    )
    return config


def start_server(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`imgproxy serve -c config`, its output appended to `log`."""
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "imgproxy", "serve", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )


async def create_org(config: Path, name: str = "Acme") -> dict[str, str]:
    """`imgproxy org create` as an operator runs it; its JSON line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imgproxy",
        "org",
        "create",
        name,
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    made: dict[str, str] = json.loads(out)
    return made
