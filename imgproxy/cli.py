"""Command line: serve, tile, check-config (SPEC §11)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from imgproxy import __version__
from imgproxy.settings import TILE_FORMATS, ConfigError, Settings, load_settings

log = logging.getLogger("imgproxy")


def _settings(path: str | None) -> Settings:
    """The configuration of `-c FILE`, or the embedded demo (with its images made on first use)."""
    if path is not None:
        return load_settings(path)
    from imgproxy.demo import demo_settings, ensure_demo_images

    data_dir = os.environ.get("IMGPROXY_STORAGE__DIR", "./var")
    settings = demo_settings(data_dir)
    # In a low-priority thread: libvips' worker threads, started now and reused by the
    # server, inherit its priority (see processing/pool.py).
    from concurrent.futures import ThreadPoolExecutor

    from imgproxy.processing.pool import lower_priority

    with ThreadPoolExecutor(1, initializer=lower_priority) as executor:
        executor.submit(ensure_demo_images, Path(settings.origins[0].root)).result()
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from imgproxy.app import create_app
    from imgproxy.web.server import serve

    settings = _settings(args.config)

    def started() -> None:
        host, port = settings.server.host, settings.server.port
        print(f"imgproxy {__version__} serving on http://{host}:{port}", flush=True)
        if args.config is None:
            print(f"demo: {settings.public_base()}/demo", flush=True)

    asyncio.run(serve(create_app(settings), settings, started))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config) if args.config else _defaults()
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{settings.source}: OK ({len(settings.origins)} origin(s))")
    return 0


def _defaults() -> Settings:
    return load_settings()


def cmd_tile(args: argparse.Namespace) -> int:
    from imgproxy.processing.pipeline import InvalidImage, configure_vips, dzsave

    configure_vips()
    src = Path(args.src)
    outdir = Path(args.outdir)
    if not src.is_file():
        print(f"{src}: no such file", file=sys.stderr)
        return 2
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"{outdir}: cannot create the output directory: {exc.strerror}", file=sys.stderr)
        return 1
    started = time.monotonic()
    shown = -1

    def progress(percent: int) -> None:
        nonlocal shown
        if percent != shown:
            shown = percent
            elapsed = time.monotonic() - started
            print(f"\rtiling {src.name}: {percent:3d}% ({elapsed:.1f}s)", end="", file=sys.stderr)

    try:
        dzsave(
            src,
            outdir / src.stem,
            args.tile_size,
            args.overlap,
            args.format,
            args.quality,
            "iiif3" if args.layout == "iiif3" else "dz",
            progress,
        )
    except InvalidImage as exc:
        print(f"\n{src}: {exc}", file=sys.stderr)
        return 1
    if args.layout == "dz":
        from imgproxy.processing.pipeline import fix_dzi_format

        fix_dzi_format(outdir / f"{src.stem}.dzi", args.format)
        if args.format == "jpg":
            _rename_jpeg_tiles(outdir / f"{src.stem}_files")
    else:
        _fix_info_json(outdir / src.stem / "info.json", args.format, args.base_url)
    elapsed = time.monotonic() - started
    print(f"\rtiling {src.name}: 100% ({elapsed:.1f}s)", file=sys.stderr)
    target = outdir / (f"{src.stem}.dzi" if args.layout == "dz" else f"{src.stem}/info.json")
    print(target)
    return 0


def _rename_jpeg_tiles(tiles: Path) -> None:
    """Name direct-mode JPEG tiles .jpg, the extension the .dzi's Format makes viewers ask for.

    (The server keeps them as .jpeg and maps the URL; a standalone pyramid must match itself.)
    """
    with os.scandir(tiles) as levels:
        level_dirs = [entry.path for entry in levels if entry.is_dir()]
    for level in level_dirs:
        with os.scandir(level) as entries:
            names = [entry.name for entry in entries if entry.name.endswith(".jpeg")]
        for name in names:
            os.rename(
                os.path.join(level, name), os.path.join(level, name[: -len(".jpeg")] + ".jpg")
            )


def _fix_info_json(info: Path, tile_format: str, base_url: str | None) -> None:
    """Declare non-JPEG tiles in info.json (level 0 implies jpg) and set its id to the hosting URL."""
    data = json.loads(info.read_text(encoding="utf-8"))
    if base_url:
        data["id"] = f"{base_url.rstrip('/')}/{info.parent.name}"
    if tile_format != "jpg":
        data["preferredFormats"] = [tile_format]
        data["extraFormats"] = [tile_format]
    info.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def cmd_warm(args: argparse.Namespace) -> int:
    import asyncio

    from imgproxy.runtime import open_runtime
    from imgproxy.warm import run_warm

    settings = _settings(args.config)

    def out(text: str) -> None:
        end = "" if text.startswith("\r") else "\n"
        print(text, end=end, file=sys.stderr, flush=True)

    lines = None
    if args.ids == "-":
        lines = sys.stdin.read().splitlines()
    elif args.ids:
        try:
            lines = Path(args.ids).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            print(f"{args.ids}: cannot read: {exc.strerror}", file=sys.stderr)
            return 2

    async def warm() -> int:
        async with open_runtime(settings, workers=args.process) as state:
            if not args.process:
                out("queued for the running server's workers (use --process to work here)")
            return await run_warm(state, args.origin, lines, out)

    return asyncio.run(warm())


def cmd_org(args: argparse.Namespace) -> int:
    import asyncio

    import orjson

    from imgproxy.metadata.accounts import Accounts
    from imgproxy.metadata.store import MetadataStore

    settings = load_settings(args.config) if args.config else _demo_data_settings()

    async def run() -> int:
        store = MetadataStore(settings.data_dir / "imgproxy.sqlite3")
        await store.open()
        try:
            accounts = Accounts(store)
            if args.org_command == "create":
                made = await accounts.create_organisation(args.name)
                print(
                    orjson.dumps(
                        {
                            "organisationId": made.organisation.id,
                            "apiKey": made.api_key,
                            "rootFolderId": made.organisation.root_folder,
                        }
                    ).decode()
                )
            elif args.org_command == "list":
                for org in await accounts.list_organisations():
                    print(
                        orjson.dumps(
                            {
                                "organisationId": org.id,
                                "name": org.name,
                                "rootFolderId": org.root_folder,
                            }
                        ).decode()
                    )
            else:
                key = await accounts.rotate_key(args.id)
                if key is None:
                    print(f"no organisation {args.id!r}", file=sys.stderr)
                    return 1
                print(orjson.dumps({"organisationId": args.id, "apiKey": key}).decode())
        finally:
            await store.close()
        return 0

    return asyncio.run(run())


def _demo_data_settings() -> Settings:
    """Without -c: the data directory `serve` would use for the demo (no images generated)."""
    from imgproxy.demo import demo_settings

    return demo_settings(os.environ.get("IMGPROXY_STORAGE__DIR", "./var"))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgproxy",
        description="An asynchronous on-demand image proxy: placeholders, renditions and "
        "deep-zoom tiles from your own image repositories.",
    )
    parser.add_argument("--version", action="version", version=f"imgproxy {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the HTTP server",
        description="Run the server. Without -c, serve the embedded demo (generated sample "
        "images under ./var, on 127.0.0.1:8080). IMGPROXY_SECTION__KEY variables override "
        "any key.",
    )
    serve.add_argument("-c", "--config", help="TOML configuration file")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Report every unknown key and bad value; exit 1 if there is any.",
    )
    check.add_argument("-c", "--config", help="TOML configuration file")
    check.set_defaults(func=cmd_check_config)

    tile = sub.add_parser(
        "tile",
        help="tile one image file into a DeepZoom (or IIIF 3) pyramid",
        description="Write OUTDIR/<stem>.dzi and OUTDIR/<stem>_files/ (or, with --layout "
        "iiif3, an IIIF Image API 3 level-0 tree OUTDIR/<stem>/ with its info.json).",
    )
    tile.add_argument("src", help="the image file")
    tile.add_argument("outdir", help="the output directory")
    tile.add_argument("--tile-size", type=_positive, default=254, help="default 254")
    tile.add_argument("--overlap", type=int, default=1, help="default 1")
    tile.add_argument("--format", choices=TILE_FORMATS, default="jpg", help="default jpg")
    tile.add_argument("--quality", type=_positive, default=82, help="default 82")
    tile.add_argument("--layout", choices=("dz", "iiif3"), default="dz", help="default dz")
    tile.add_argument(
        "--base-url",
        help="iiif3: the URL OUTDIR will be served at; info.json's id becomes BASE_URL/<stem> "
        "(without it, libvips' placeholder https://example.com/iiif/<stem>)",
    )
    tile.set_defaults(func=cmd_tile)

    warm = sub.add_parser(
        "warm",
        help="process a whole origin collection ahead of views",
        description="List an origin's collection (directory walk, S3 listing, FTP listing; "
        "http and rest origins take --ids), queue it with bulk priority in the shared durable "
        "queue and show progress until every image is ready or in error. A running server's "
        "workers take the jobs; --process runs workers in this command. Resumable: images "
        "already ready are skipped. Exit 1 when some image ended in error.",
    )
    warm.add_argument("-c", "--config", help="TOML configuration file")
    warm.add_argument("--origin", help="only this origin (default: every listable origin)")
    warm.add_argument("--ids", help="a file of IDs, one per line ('-' for stdin)")
    warm.add_argument(
        "--process", action="store_true", help="run workers in this command (no server needed)"
    )
    warm.set_defaults(func=cmd_warm)

    org = sub.add_parser(
        "org",
        help="manage organisations and their API keys",
        description="Organisations own the images created through the hook, management and "
        "store APIs. A key is shown once (only its hash is stored); it works at once, also "
        "for a server already running.",
    )
    org_sub = org.add_subparsers(dest="org_command", required=True)
    org_create = org_sub.add_parser(
        "create", help='create one; prints {"organisationId", "apiKey", "rootFolderId"}'
    )
    org_create.add_argument("name")
    org_list = org_sub.add_parser("list", help="list organisations (never their keys)")
    org_rotate = org_sub.add_parser("rotate-key", help="replace a key; the old one stops working")
    org_rotate.add_argument("id", help="the organisationId")
    for parser_ in (org_create, org_list, org_rotate):
        parser_.add_argument("-c", "--config", help="TOML configuration file")
        parser_.set_defaults(func=cmd_org)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pyvips").setLevel(logging.WARNING)
    # botocore's debug log prints the Authorization header, access key ID included.
    # aioftp logs the user name at debug level.
    for noisy in ("botocore", "aiobotocore", "aioftp"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("refusing to start: fix the configuration above", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
