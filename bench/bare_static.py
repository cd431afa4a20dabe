"""Figure 4's second reference: the tile URLs served by a bare aiohttp app (no middleware).

`python -m bench.bare_static SHARD_DIR PORT DISK_EXT` (started by bench.servers).
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

IMMUTABLE = "public, max-age=31536000, immutable"


def make_app(shard_dir: Path, disk_ext: str) -> web.Application:
    async def tile(request: web.Request) -> web.StreamResponse:
        m = request.match_info
        path = (
            shard_dir / m["id"] / f"v{m['version']}" / "zoom_files" / m["level"]
        ) / f"{m['col']}_{m['row']}.{disk_ext}"
        if not path.is_file():
            raise web.HTTPNotFound()
        headers = {"Content-Type": "image/jpeg", "Cache-Control": IMMUTABLE}
        return web.FileResponse(path, headers=headers)

    app = web.Application()
    app.router.add_get(
        r"/images/{id}/v{version:\d+}/zoom_files/{level:\d+}/{col:\d+}_{row:\d+}.{ext:[a-z]+}",
        tile,
    )
    return app


def main(argv: list[str]) -> None:
    shard_dir, port, disk_ext = Path(argv[0]), int(argv[1]), argv[2]
    web.run_app(
        make_app(shard_dir, disk_ext), host="127.0.0.1", port=port, print=None, access_log=None
    )


if __name__ == "__main__":
    main(sys.argv[1:])
