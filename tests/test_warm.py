"""Warming a collection: `imgproxy warm` and eager mode queue everything with bulk priority."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from imgproxy.state import STATE
from tests.conftest import AppFactory, FakeOrigin, file_origin, make_image, poll


def write_config(tmp_path: Path, origins_toml: str) -> Path:
    config = tmp_path / "warm.toml"
    config.write_text(
        f"""
[storage]
dir = "{tmp_path / "data"}"

[processing]
widths = [320, 640]

[limits]
allow_private_networks = true

{origins_toml}
"""
    )
    return config


def file_origin_toml(root: Path, name: str = "local") -> str:
    return f"""
[[origins]]
name = "{name}"
type = "file"
root = "{root}"
path = "{{id}}"
extensions = [".jpg", ".png"]
"""


async def run_cli(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imgproxy",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def make_collection(root: Path, count: int) -> list[str]:
    ids = [f"photo-{i}" for i in range(count)]
    for i, image_id in enumerate(ids):
        (root / f"{image_id}.jpg").write_bytes(make_image(400 + i * 10, 300, seed=i))
    return ids


async def test_warm_process_then_resume(tmp_path: Path, originals: Path) -> None:
    """warm --process builds a whole folder; a second run skips what is ready."""
    make_collection(originals, 5)
    (originals / "notes.txt").write_text("not matching the template: skipped")
    (originals / "sub").mkdir()
    (originals / "sub" / "deep.jpg").write_bytes(make_image(100, 100))  # "sub/deep" is no ID
    config = write_config(tmp_path, file_origin_toml(originals))
    code, out = await run_cli("warm", "-c", str(config), "--process")
    assert code == 0, out
    assert "queued 5 images (0 already ready)" in out
    assert "5/5 done" in out
    assert "5 ready, 0 errors" in out
    code, out = await run_cli("warm", "-c", str(config), "--process")
    assert code == 0, out
    assert "queued 0 images (5 already ready)" in out
    assert "5 skipped as already ready" in out


async def test_warm_reports_errors(tmp_path: Path, originals: Path) -> None:
    """Images that fail end the command with exit 1 and a summary by error code."""
    make_collection(originals, 2)
    (originals / "broken.jpg").write_bytes(b"not a jpeg")
    config = write_config(tmp_path, file_origin_toml(originals))
    code, out = await run_cli("warm", "-c", str(config), "--process")
    assert code == 1, out
    assert "2 ready, 1 errors (invalidImage: 1)" in out


async def test_warm_ids_from_stdin_for_http(tmp_path: Path, origin_server: FakeOrigin) -> None:
    """An http origin cannot list: IDs come from stdin; invalid ones are reported and skipped."""
    for name in ("w1", "w2"):
        origin_server.files[name] = make_image(300, 200)
    config = write_config(
        tmp_path,
        f"""
[[origins]]
name = "web"
type = "http"
url = "{origin_server.url}{{id}}"
""",
    )
    code, out = await run_cli("warm", "-c", str(config), "--process")
    assert code == 2
    assert "pass --ids" in out
    code, out = await run_cli(
        "warm", "-c", str(config), "--process", "--ids", "-", stdin=b"w1\n# comment\nw2\n../x\n"
    )
    assert code == 0, out
    assert "skipped invalid id '../x'" in out
    assert "2 ready" in out
    assert origin_server.hits == {"w1": 1, "w2": 1}


async def test_warm_unknown_origin(tmp_path: Path, originals: Path) -> None:
    """Naming an origin that does not exist is an error, not a silent no-op."""
    config = write_config(tmp_path, file_origin_toml(originals))
    code, out = await run_cli("warm", "-c", str(config), "--origin", "nope")
    assert code == 2
    assert "no origin named 'nope'" in out


async def test_running_server_takes_warm_jobs(
    make_client: AppFactory, tmp_path: Path, originals: Path
) -> None:
    """Without --process, the jobs go to the shared queue and a running server's workers do them."""
    ids = make_collection(originals, 3)
    client = await make_client([file_origin(originals, extensions=[".jpg", ".png"])])
    config = write_config(tmp_path, file_origin_toml(originals))
    code, out = await run_cli("warm", "-c", str(config))
    assert code == 0, out
    assert "running server's workers" in out
    store = client.app[STATE].store
    for image_id in ids:
        record = await store.get_image(image_id)
        assert record is not None and record.status == "ready"


async def test_eager_mode_warms_at_start(make_client: AppFactory, originals: Path) -> None:
    """processing.mode = "eager" queues every listable origin's collection when the server starts."""
    ids = make_collection(originals, 3)
    client = await make_client(
        [file_origin(originals, extensions=[".jpg"])], processing={"mode": "eager"}
    )
    store = client.app[STATE].store

    async def all_ready() -> bool:
        records = [await store.get_image(i) for i in ids]
        return all(r is not None and r.status == "ready" for r in records)

    await poll(all_ready, timeout=60)
    info: dict[str, Any] = await (await client.get(f"/images/{ids[0]}/info.json")).json()
    assert info["stages"]["zoom"] is True
