"""Figure 4's second reference: the tile and rendition URLs served by a bare aiohttp app (no
middleware, no lookups), and `POST /echo`, the images/add answer-time reference (a JSON body
parsed and answered with one small object per item, nothing stored).

`python -m bench.bare_static CACHE_ROOT PORT DISK_EXT` (started by bench.servers).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from aiohttp import web

IMMUTABLE = "public, max-age=31536000, immutable"
TYPES = {"jpg": "image/jpeg", "webp": "image/webp", "avif": "image/avif", "png": "image/png"}


def make_app(cache_root: Path, disk_ext: str) -> web.Application:
    def image_dir(image_id: str) -> Path:
        shard = hashlib.blake2s(image_id.encode(), digest_size=1).hexdigest()
        return cache_root / shard / image_id

    def send(path: Path, ext: str) -> web.StreamResponse:
        if not path.is_file():
            raise web.HTTPNotFound()
        headers = {"Content-Type": TYPES[ext], "Cache-Control": IMMUTABLE}
        return web.FileResponse(path, headers=headers)

    async def tile(request: web.Request) -> web.StreamResponse:
        m = request.match_info
        path = image_dir(m["id"]) / f"v{m['version']}" / "zoom_files" / m["level"]
        return send(path / f"{m['col']}_{m['row']}.{disk_ext}", m["ext"])

    async def rendition(request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return send(image_dir(m["id"]) / f"v{m['version']}" / f"{m['width']}.{m['ext']}", m["ext"])

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        images = [
            {"id": f"{i:08d}", "name": item.get("name", ""), "status": "queued"}
            for i, item in enumerate(body.get("images", []))
        ]
        return web.json_response({"result": {"images": images}}, dumps=json.dumps)

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_get(
        r"/images/{id}/v{version:\d+}/zoom_files/{level:\d+}/{col:\d+}_{row:\d+}.{ext:[a-z]+}",
        tile,
    )
    app.router.add_get(r"/images/{id}/v{version:\d+}/{width:\d+}.{ext:[a-z]+}", rendition)
    app.router.add_post("/echo", echo)
    return app


def main(argv: list[str]) -> None:
    cache_root, port, disk_ext = Path(argv[0]), int(argv[1]), argv[2]
    web.run_app(
        make_app(cache_root, disk_ext), host="127.0.0.1", port=port, print=None, access_log=None
    )


if __name__ == "__main__":
    main(sys.argv[1:])
