"""The pyvips functions on their own: header checks, colour, orientation, metadata, outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import pyvips

from imgproxy.processing import pipeline
from tests.conftest import make_image


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def oriented_jpeg(width: int, height: int, orientation: int) -> bytes:
    image = pyvips.Image.new_from_buffer(make_image(width, height), "").copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    data: bytes = image.jpegsave_buffer(Q=90)
    return data


@pytest.fixture(autouse=True)
def _vips() -> None:
    pipeline.configure_vips()


def test_probe_reads_size_format_alpha(tmp_path: Path) -> None:
    """probe() reports displayed size, format and alpha from the header."""
    info = pipeline.probe(write(tmp_path / "a", make_image(300, 200, fmt="png", alpha=True)), 10**9)
    assert (info.width, info.height, info.format, info.has_alpha) == (300, 200, "png", True)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    """Every EXIF orientation is honoured: sizes swap for 5-8 and outputs come out upright."""
    src = write(tmp_path / "o", oriented_jpeg(400, 200, orientation))
    info = pipeline.probe(src, 10**9)
    upright = (200, 400) if orientation >= 5 else (400, 200)
    assert (info.width, info.height) == upright
    pipeline.build_renditions(src, lambda w, f: tmp_path / f"{w}.{f}", [100], ["jpg"], 80)
    out = pyvips.Image.new_from_file(str(tmp_path / "100.jpg"))
    assert out.width == 100
    assert out.height == (200 if orientation >= 5 else 50)
    assert not out.get_typeof("orientation") or out.get("orientation") == 1
    pipeline.build_tiles(src, tmp_path / "v1", 254, 1, "jpg", 80)
    dzi = (tmp_path / "v1" / "zoom.dzi").read_text()
    assert f'Width="{upright[0]}"' in dzi and f'Height="{upright[1]}"' in dzi


def test_outputs_carry_no_metadata(tmp_path: Path) -> None:
    """EXIF and other metadata are stripped from every derivative."""
    image = pyvips.Image.new_from_buffer(make_image(500, 300), "").copy()
    image.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Artist", "secret person")
    src = write(tmp_path / "m", image.jpegsave_buffer())
    pipeline.build_renditions(src, lambda w, f: tmp_path / f"{w}.{f}", [320], ["jpg", "webp"], 80)
    pipeline.build_placeholder(src, tmp_path / "p.jpg", 32)
    for name in ("320.jpg", "320.webp", "p.jpg"):
        out = pyvips.Image.new_from_file(str(tmp_path / name))
        assert not out.get_typeof("exif-data"), name
        assert b"secret person" not in (tmp_path / name).read_bytes()


def test_placeholder_is_tiny_jpeg(tmp_path: Path) -> None:
    """The placeholder is a JPEG of placeholder_width, at most 2 KB, alpha flattened."""
    src = write(tmp_path / "s", make_image(1200, 800, fmt="png", alpha=True))
    pipeline.build_placeholder(src, tmp_path / "p.jpg", 32)
    data = (tmp_path / "p.jpg").read_bytes()
    assert data[:3] == b"\xff\xd8\xff"
    assert len(data) <= 2048
    out = pyvips.Image.new_from_buffer(data, "")
    assert (out.width, out.height, out.bands) == (32, 21, 3)


def test_cmyk_and_16bit_become_srgb_8bit(tmp_path: Path) -> None:
    """CMYK and 16-bit originals come out as 8-bit sRGB."""
    rgb = pyvips.Image.new_from_buffer(make_image(300, 200), "")
    cmyk = write(tmp_path / "cmyk", rgb.colourspace("cmyk").jpegsave_buffer())
    deep = write(tmp_path / "deep", rgb.colourspace("rgb16").pngsave_buffer())
    for src in (cmyk, deep):
        pipeline.build_renditions(
            src, lambda w, f, s=src: tmp_path / f"{s.name}-{w}.{f}", [100], ["png"], 80
        )
        out = pyvips.Image.new_from_file(str(tmp_path / f"{src.name}-100.png"))
        assert (out.bands, out.format, out.interpretation) == (3, "uchar", "srgb"), src.name


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty", b"", "empty"),
        ("text", b"hello world, not an image", "."),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "."),
    ],
)
def test_probe_refuses_non_images(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    """Empty files, text and SVG are refused from the header."""
    with pytest.raises(pipeline.InvalidImage, match=reason):
        pipeline.probe(write(tmp_path / name, data), 10**9)


def test_probe_refuses_too_many_pixels(tmp_path: Path) -> None:
    """width x height x pages over max_pixels is refused before decoding."""
    with pytest.raises(pipeline.InvalidImage, match="too many pixels"):
        pipeline.probe(write(tmp_path / "big", make_image(200, 200)), 39_999)


def test_truncated_jpeg_fails_to_decode(tmp_path: Path) -> None:
    """A truncated JPEG is an error (fail_on), not a grey-filled image."""
    data = make_image(800, 600)
    src = write(tmp_path / "cut", data[: len(data) // 2])
    pipeline.probe(src, 10**9)  # the header alone is intact
    with pytest.raises(pipeline.InvalidImage):
        pipeline.build_renditions(src, lambda w, f: tmp_path / f"{w}.{f}", [320], ["jpg"], 80)
    assert not list(tmp_path.glob(".tmp-*"))


def test_renditions_from_one_base(tmp_path: Path) -> None:
    """Every width and format is written, each at its width, none larger than asked."""
    src = write(tmp_path / "r", make_image(1000, 500))
    pipeline.build_renditions(
        src, lambda w, f: tmp_path / f"{w}.{f}", [320, 640, 1000], ["jpg", "webp", "avif"], 80
    )
    for width in (320, 640, 1000):
        for fmt in ("jpg", "webp", "avif"):
            out = pyvips.Image.new_from_file(str(tmp_path / f"{width}.{fmt}"))
            assert (out.width, out.height) == (width, width // 2)


def test_a_derivative_once_written_is_never_replaced(tmp_path: Path) -> None:
    """Two builds of one rendition (on request and by its job) race: the first file stays, so a
    versioned URL never changes bytes once served, and no temporary file is left."""
    first = pyvips.Image.new_from_buffer(make_image(64, 48, seed=1), "")
    second = pyvips.Image.new_from_buffer(make_image(64, 48, seed=2), "")
    dest = tmp_path / "v1" / "64.jpg"
    pipeline.save(first, dest, "jpg", 80)
    written = dest.read_bytes()
    pipeline.save(second, dest, "jpg", 80)
    assert dest.read_bytes() == written
    with pipeline.atomic_path(
        dest, replace=False
    ) as tmp:  # the race itself: both got past exists()
        pipeline.save(second, tmp, "jpg", 80)
    assert dest.read_bytes() == written
    assert sorted(p.name for p in dest.parent.iterdir()) == ["64.jpg"]
