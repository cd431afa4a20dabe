"""The `imgproxy` command run for real, as a subprocess: check-config, serve's refusal, tile."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import pyvips

WIDTH, HEIGHT = 1000, 700
DZ_NS = "{http://schemas.microsoft.com/deepzoom/2008}"
IIIF3_CONTEXT = "http://iiif.io/api/image/3/context.json"
MAGIC = {"jpg": b"\xff\xd8\xff", "png": b"\x89PNG", "webp": b"RIFF"}

GOOD = """
[server]
port = 8181

[[origins]]
name = "local"
type = "file"
root = "./originals"
extensions = [".jpg"]
"""

BAD = """
[server]
prot = 8080
port = 99999

[processing]
workers = "many"

[[origins]]
name = "local"
type = "file"
root = "./originals"
path = "photos/fixed.jpg"
extensions = ["jpg"]
"""
BAD_KEYS = (
    "server.prot",
    "server.port",
    "processing.workers",
    "origins[0] (local).path",
    "origins[0] (local).extensions",
)


def run(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m imgproxy ARGS` with no IMGPROXY_* variables from the outer environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    return subprocess.run(
        [sys.executable, "-m", "imgproxy", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def make_jpeg(path: Path, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """A gradient JPEG with some texture, so every tile holds real data."""
    xy = pyvips.Image.xyz(width, height)
    r = (xy[0] * 255 / width).cast("uchar")
    g = (xy[1] * 255 / height).cast("uchar")
    b = ((xy[0] + xy[1]) % 256).cast("uchar")
    r.bandjoin([g, b]).copy(interpretation="srgb").jpegsave(str(path), Q=90)
    return path


def decode(path: Path) -> pyvips.Image:
    """Fully decode an image file (fail_on=error), returning it in memory."""
    return pyvips.Image.new_from_file(str(path), fail_on="error").copy_memory()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1000x700 JPEG source image."""
    return make_jpeg(tmp_path_factory.mktemp("src") / "photo.jpg")


@pytest.fixture(scope="module")
def dz_run(
    photo: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`imgproxy tile photo.jpg OUT` with the defaults, run once for the module."""
    out = tmp_path_factory.mktemp("dz")
    return run("tile", str(photo), str(out), cwd=out), out


# --- check-config and serve ---


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    """check-config exits 0 on a valid file and says so on stdout."""
    (tmp_path / "good.toml").write_text(GOOD, encoding="utf-8")
    result = run("check-config", "-c", "good.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "good.toml: OK (1 origin(s))" in result.stdout


def test_check_config_names_every_bad_key(tmp_path: Path) -> None:
    """check-config exits non-zero and names each unknown key and bad value on stderr."""
    (tmp_path / "bad.toml").write_text(BAD, encoding="utf-8")
    result = run("check-config", "-c", "bad.toml", cwd=tmp_path)
    assert result.returncode != 0
    for key in BAD_KEYS:
        assert key in result.stderr, (key, result.stderr)
    assert f"{len(BAD_KEYS)} problem(s) found" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_without_a_file_checks_defaults_and_environment(tmp_path: Path) -> None:
    """Without -c the defaults are checked, and a bad IMGPROXY_* variable fails it."""
    assert run("check-config", cwd=tmp_path).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}
    result = subprocess.run(
        [sys.executable, "-m", "imgproxy", "check-config"],
        cwd=tmp_path,
        env={**env, "IMGPROXY_SERVER__PORT": "http"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "server.port: expected an integer, got 'http'" in result.stderr


def test_check_config_reports_a_missing_file(tmp_path: Path) -> None:
    """check-config on a file that does not exist fails with a message, not a traceback."""
    result = run("check-config", "-c", "nowhere.toml", cwd=tmp_path)
    assert result.returncode != 0
    assert "nowhere.toml: cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_bad_config_without_serving(tmp_path: Path) -> None:
    """serve -c bad.toml exits non-zero naming the problems, before it binds or serves anything."""
    (tmp_path / "bad.toml").write_text(BAD, encoding="utf-8")
    result = run("serve", "-c", "bad.toml", cwd=tmp_path)
    assert result.returncode != 0
    assert "refusing to start" in result.stderr
    for key in BAD_KEYS:
        assert key in result.stderr
    assert "serving on" not in result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()  # nothing was opened under storage.dir


# --- tile: DeepZoom ---


def test_tile_writes_a_deepzoom_descriptor(
    dz_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """tile SRC OUTDIR writes OUTDIR/<stem>.dzi: DeepZoom 2008, jpg, 254/1, the image's size."""
    result, out = dz_run
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "photo.dzi")
    root = ET.parse(out / "photo.dzi").getroot()
    assert root.tag == f"{DZ_NS}Image"
    assert root.attrib["Format"] == "jpg"
    assert root.attrib["TileSize"] == "254"
    assert root.attrib["Overlap"] == "1"
    size = root.find(f"{DZ_NS}Size")
    assert size is not None
    assert (size.attrib["Width"], size.attrib["Height"]) == (str(WIDTH), str(HEIGHT))


def test_tile_shows_progress_to_100_percent(
    dz_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """tile prints a progress line on stderr that ends at 100%."""
    result, _out = dz_run
    assert "tiling photo.jpg:" in result.stderr
    assert "100%" in result.stderr.rsplit("\r", 1)[-1]


def test_tile_writes_every_level(dz_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """<stem>_files/ holds levels 0..ceil(log2(max side)), each halving the previous one."""
    _result, out = dz_run
    files = out / "photo_files"
    deepest = math.ceil(math.log2(max(WIDTH, HEIGHT)))
    levels = sorted(int(p.name) for p in files.iterdir() if p.is_dir())
    assert levels == list(range(deepest + 1))
    for level in levels:
        scale = 2 ** (deepest - level)
        width, height = math.ceil(WIDTH / scale), math.ceil(HEIGHT / scale)
        names = {p.name for p in (files / str(level)).iterdir()}
        expected = {
            f"{col}_{row}.jpg"
            for col in range(math.ceil(width / 254))
            for row in range(math.ceil(height / 254))
        }
        assert names == expected, level
    assert decode(files / "0" / "0_0.jpg").width == 1


def test_tile_jpeg_tiles_are_named_jpg(
    dz_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Tiles are .jpg on disk, the extension the .dzi's Format makes viewers request."""
    _result, out = dz_run
    tiles = [p for p in (out / "photo_files").rglob("*") if p.is_file() and p.suffix != ".xml"]
    assert tiles
    assert {p.suffix for p in tiles} == {".jpg"}
    for tile in tiles:
        assert tile.read_bytes().startswith(MAGIC["jpg"]), tile


def test_tile_deepest_level_tiles_carry_the_overlap(
    dz_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """At full size, first column/row tiles are 255 px, interior 256 px, the last ones the rest."""
    _result, out = dz_run
    level = out / "photo_files" / str(math.ceil(math.log2(max(WIDTH, HEIGHT))))
    expected_widths = [255, 256, 256, WIDTH - 3 * 254 + 1]  # 1000 px in 254 px columns
    expected_heights = [255, 256, HEIGHT - 2 * 254 + 1]  # 700 px in 254 px rows
    for col, width in enumerate(expected_widths):
        for row, height in enumerate(expected_heights):
            tile = decode(level / f"{col}_{row}.jpg")
            assert (tile.width, tile.height) == (width, height), (col, row)
            assert tile.bands == 3


def test_tile_every_tile_decodes(dz_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """Every tile file of every level is a complete, decodable image."""
    _result, out = dz_run
    for tile in (out / "photo_files").rglob("*.jpg"):
        image = decode(tile)
        assert image.width >= 1 and image.height >= 1


def test_tile_png_format_writes_png_tiles(photo: Path, tmp_path: Path) -> None:
    """--format png gives Format="png" and PNG tile files."""
    result = run("tile", str(photo), str(tmp_path), "--format", "png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ET.parse(tmp_path / "photo.dzi").getroot().attrib["Format"] == "png"
    tiles = [p for p in (tmp_path / "photo_files").rglob("*") if p.is_file() and p.suffix != ".xml"]
    assert tiles and {p.suffix for p in tiles} == {".png"}
    assert (tmp_path / "photo_files" / "10" / "1_1.png").read_bytes().startswith(MAGIC["png"])
    assert decode(tmp_path / "photo_files" / "10" / "1_1.png").width == 256


def test_tile_options_change_size_and_overlap(photo: Path, tmp_path: Path) -> None:
    """--tile-size and --overlap reach the descriptor and the tiles."""
    result = run(
        "tile", str(photo), str(tmp_path), "--tile-size", "512", "--overlap", "0", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    root = ET.parse(tmp_path / "photo.dzi").getroot()
    assert (root.attrib["TileSize"], root.attrib["Overlap"]) == ("512", "0")
    assert decode(tmp_path / "photo_files" / "10" / "0_0.jpg").width == 512


# --- tile: IIIF Image API 3 ---


def expected_iiif_files(
    width: int, height: int, tile: int, scale_factors: list[int], ext: str
) -> set[str]:
    """The level-0 paths a IIIF 3 client (e.g. OpenSeadragon) asks for, given info.json."""
    paths = set()
    for sf in scale_factors:
        level_w, level_h = math.ceil(width / sf), math.ceil(height / sf)
        if level_w <= tile and level_h <= tile:
            paths.add(f"full/{level_w},{level_h}/0/default.{ext}")
            continue
        region = tile * sf
        for y in range(0, height, region):
            for x in range(0, width, region):
                rw, rh = min(region, width - x), min(region, height - y)
                size = f"{math.ceil(rw / sf)},{math.ceil(rh / sf)}"
                paths.add(f"{x},{y},{rw},{rh}/{size}/0/default.{ext}")
    return paths


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_tile_iiif3_layout_matches_its_info_json(photo: Path, tmp_path: Path, fmt: str) -> None:
    """--layout iiif3 writes <stem>/info.json (Image API 3) and exactly the tiles it describes."""
    result = run(
        "tile", str(photo), str(tmp_path), "--layout", "iiif3", "--format", fmt, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    tree = tmp_path / "photo"
    assert result.stdout.strip() == str(tree / "info.json")
    assert "100%" in result.stderr
    info = json.loads((tree / "info.json").read_text(encoding="utf-8"))
    assert info["@context"] == IIIF3_CONTEXT
    assert info["type"] == "ImageService3"
    assert info["profile"] == "level0"
    assert (info["width"], info["height"]) == (WIDTH, HEIGHT)
    (tiles,) = info["tiles"]
    assert tiles["width"] == 254
    if fmt == "jpg":
        assert "preferredFormats" not in info  # level 0 implies jpg
    else:
        assert info["preferredFormats"] == [fmt] and info["extraFormats"] == [fmt]
    written = {p.relative_to(tree).as_posix() for p in tree.rglob("default.*") if p.is_file()}
    expected = expected_iiif_files(WIDTH, HEIGHT, tiles["width"], tiles["scaleFactors"], fmt)
    assert written == expected
    for name in written:
        assert (tree / name).read_bytes().startswith(MAGIC[fmt]), name
        decode(tree / name)


def test_tile_iiif3_base_url_sets_the_id(photo: Path, tmp_path: Path) -> None:
    """--base-url makes info.json's id the URL the tree will be served at."""
    result = run(
        "tile",
        str(photo),
        str(tmp_path),
        "--layout",
        "iiif3",
        "--base-url",
        "https://cdn.example.org/iiif/",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "photo" / "info.json").read_text(encoding="utf-8"))
    assert info["id"] == "https://cdn.example.org/iiif/photo"


# --- tile: failures ---


def test_tile_missing_source_fails_clearly(tmp_path: Path) -> None:
    """A SRC that does not exist exits non-zero saying so, and writes nothing."""
    result = run("tile", "nope.jpg", "out", cwd=tmp_path)
    assert result.returncode != 0
    assert "nope.jpg: no such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_tile_non_image_source_fails_clearly(tmp_path: Path) -> None:
    """A text file as SRC exits non-zero with a one-line reason naming it, and no traceback."""
    (tmp_path / "notes.txt").write_text("not an image\n", encoding="utf-8")
    result = run("tile", "notes.txt", "out", cwd=tmp_path)
    assert result.returncode != 0
    assert "notes.txt:" in result.stderr
    assert "not a known file format" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "notes.dzi").exists()


def test_tile_outdir_that_is_a_file_fails_clearly(photo: Path, tmp_path: Path) -> None:
    """An OUTDIR that is an existing file exits non-zero with a message, not a traceback."""
    (tmp_path / "taken").write_text("", encoding="utf-8")
    result = run("tile", str(photo), "taken", cwd=tmp_path)
    assert result.returncode != 0
    assert "taken: cannot create the output directory" in result.stderr
    assert "Traceback" not in result.stderr
