"""Decoding images safely, from bytes (queries, ingest) or from a path/URI (catalogs)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from engine.domain import InvalidInput, NotFound

MAX_PIXELS = 64_000_000
"""Images larger than this (about 8000 x 8000) are refused as likely decompression bombs."""


def decode_image(data: bytes, *, what: str = "image", max_pixels: int = MAX_PIXELS
                 ) -> Image.Image:
    """Decode encoded image bytes into an RGB image, or raise InvalidInput saying why.

    ``max_pixels``: the largest width x height accepted (the service passes
    ``service.limits.max_image_pixels``).

    The whole image is decoded here (``load``) so a truncated file fails now,
    with a message, rather than later inside an encoder.
    """
    if not data:
        raise InvalidInput(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidInput(
                    f"{what} is {width}x{height} pixels, above the limit of {max_pixels:,}; "
                    "resize it before sending"
                )
            image.load()
    except InvalidInput:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise InvalidInput(
            f"{what} could not be decoded ({exc.__class__.__name__}); "
            "send PNG, JPEG, WebP, GIF or BMP bytes"
        ) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"{what} is corrupt or truncated: {exc}") from exc
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of an image; transparency is flattened onto white (stamps and icons use it)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def resolve_image_path(uri: str, base_dir: Path | None = None) -> Path:
    """The local file an image URI names: a plain path (relative to ``base_dir``) or file://."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme in ("", ) or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        path = Path(uri)
    else:
        raise InvalidInput(f"image URI scheme {parsed.scheme!r} is not supported; use a path or file://")
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def load_image(uri: str, base_dir: Path | None = None) -> Image.Image:
    """Read and decode the image at a path or file:// URI."""
    path = resolve_image_path(uri, base_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFound(f"image file {path} does not exist") from exc
    except OSError as exc:
        raise InvalidInput(f"image file {path} cannot be read: {exc}") from exc
    return decode_image(data, what=f"image {path}")
