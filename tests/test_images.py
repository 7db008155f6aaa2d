"""Image decoding: every mode becomes RGB, anything broken is a clear InvalidInput."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from engine.domain import InvalidInput, NotFound
from engine.encoders.images import decode_image, load_image, resolve_image_path
from tests.conftest import png_bytes


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "LA"])
def test_modes_become_rgb(mode: str) -> None:
    image = decode_image(png_bytes(3, mode=mode))
    assert image.mode == "RGB" and image.size == (40, 40)


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert decode_image(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_broken_images() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        decode_image(b"")
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(b"hello")
    with pytest.raises(InvalidInput, match="corrupt or truncated"):
        decode_image(png_bytes(4)[:80])


def test_huge_image_refused() -> None:
    buf = io.BytesIO()
    Image.new("L", (9000, 8000)).save(buf, format="PNG")
    with pytest.raises(InvalidInput, match="above the limit"):
        decode_image(buf.getvalue())


def test_paths_and_uris(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes(5))
    assert resolve_image_path("a.png", tmp_path) == tmp_path / "a.png"
    assert resolve_image_path(f"file://{tmp_path}/a.png") == tmp_path / "a.png"
    assert load_image("a.png", tmp_path).size == (40, 40)
    with pytest.raises(NotFound):
        load_image("b.png", tmp_path)
    with pytest.raises(InvalidInput, match="not supported"):
        resolve_image_path("http://example.com/a.png")
