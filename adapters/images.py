"""Encoded image bytes (JPEG, PNG or WebP) to a uint8 RGB tensor, with limits checked before decoding.

The pixel count is read from the header and checked before any pixel is decoded, so a small file
that would decode to gigabytes (a decompression bomb) is refused cheaply. Grey, palette, CMYK,
alpha and 16-bit images all become 8-bit RGB.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch import Tensor

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
DEFAULT_MAX_PIXELS = 25_000_000  # 5000 x 5000


class BadImageError(ValueError):
    """The bytes are not a decodable JPEG, PNG or WebP image."""


class ImageTooLargeError(BadImageError):
    """The image (or its declared size) is above the configured limit."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """JPEG/PNG/WebP bytes -> uint8 tensor (3, H, W); an animated WebP gives its first frame."""
    with _checked_image(data, max_pixels) as image:
        rgb = _to_rgb(image)
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def image_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The pixel count an image declares in its header, after the same checks as `decode_image`; decodes nothing."""
    with _checked_image(data, max_pixels) as image:
        return image.size[0] * image.size[1]


@contextmanager
def _checked_image(data: bytes, max_pixels: int) -> Iterator[Image.Image]:
    """The opened image once its header passed the checks; PIL's failures inside become BadImageError."""
    if not data:
        raise BadImageError("empty image body")
    try:
        with Image.open(io.BytesIO(data)) as image:  # parses the header only
            _check_header(image, max_pixels)
            yield image
    except BadImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image refused as a decompression bomb: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # PIL's ways of saying "corrupt"
        raise BadImageError(f"cannot decode image: {exc}") from exc


def _check_header(image: Image.Image, max_pixels: int) -> None:
    if image.format not in ACCEPTED_FORMATS:
        raise BadImageError(f"unsupported image format {image.format or 'unknown'}; send JPEG, PNG or WebP")
    width, height = image.size
    if width < 1 or height < 1:
        raise BadImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")


def _to_rgb(image: Image.Image) -> Image.Image:
    image.load()  # decodes now, so truncated data fails here and not later
    if image.mode.startswith("I"):
        # 16-bit grey (PNG gives 0..65535): keep the top 8 bits; PIL's own convert would clip instead.
        wide = np.asarray(image).astype(np.int64)
        image = Image.fromarray(np.clip(wide >> 8, 0, 255).astype(np.uint8))
    return image.convert("RGB")
