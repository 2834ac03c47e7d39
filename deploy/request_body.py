"""Reading request bodies within limits, and the two ways a client sends images.

An image comes as the raw body (`Content-Type: image/jpeg` or `image/png`, or anything that is not
JSON) or as JSON: `{"image": "<base64>"}` or `{"images": ["<base64>", ...]}`. Limits are checked
while reading, so an oversized body is refused without being held in memory.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import AsyncIterator

from .errors import ApiError


async def read_limited(chunks: AsyncIterator[bytes], declared_length: str | None, limit: int, what: str) -> bytes:
    # isdigit() alone also accepts digits int() refuses, such as "²".
    announced = declared_length is not None and declared_length.isascii() and declared_length.isdigit()
    if announced and int(declared_length) > limit:
        raise ApiError(413, f"{what} is {int(declared_length)} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"{what} is larger than the limit of {limit} bytes")
    return bytes(body)


def json_document(body: bytes) -> object:
    """The parsed JSON body; anything unparsable is the client's 400."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from exc
    except RecursionError as exc:
        # Python's parser recurses once per nesting level, so "[[[[..." well within the size limit
        # would otherwise escape as a server error.
        raise ApiError(400, "malformed JSON body: nested too deeply") from exc


def images_from_body(body: bytes, content_type: str, max_images: int) -> list[bytes]:
    if not body:
        raise ApiError(400, "empty request body: send an image (JPEG or PNG) or JSON {\"image\": \"<base64>\"}")
    if content_type.split(";")[0].strip().lower() != "application/json":
        return [body]
    doc = json_document(body)
    if not isinstance(doc, dict) or len(doc.keys() & {"image", "images"}) != 1:
        raise ApiError(400, 'JSON body must be an object with exactly one of "image" or "images"')
    encoded = [doc["image"]] if "image" in doc else doc["images"]
    if not isinstance(encoded, list) or not encoded:
        raise ApiError(400, '"images" must be a non-empty list of base64 strings')
    if len(encoded) > max_images:
        raise ApiError(413, f"{len(encoded)} images in one request; the limit is {max_images}")
    return [_decode_base64(item, i) for i, item in enumerate(encoded)]


def _decode_base64(item: object, index: int) -> bytes:
    if not isinstance(item, str):
        raise ApiError(400, f"image {index} must be a base64 string")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"image {index} is not valid base64: {exc}") from exc
