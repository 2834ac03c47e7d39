"""Reading request bodies within limits, and the two ways a client sends images.

An image comes as the raw body (`Content-Type: image/jpeg` or `image/png`, or anything that is not
JSON) or as JSON: `{"image": "<base64>"}` or `{"images": ["<base64>", ...]}`, where each string may
also be a `data:image/...;base64,` URL (what a browser's FileReader produces). Limits are checked
while reading, so an oversized body is refused without being held in memory.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import AsyncIterator

from ...runtime.errors import ServiceBusyError
from .errors import BadRequest, TooLarge


def deadline_of(timeout_ms: int | None, default_s: float) -> float:
    """The wall-clock time a prediction must be answered by: the client's timeout may shorten the service's
    default, never lengthen it, so one client cannot hold the queues longer than the operator allows."""
    budget_s = default_s if timeout_ms is None else min(default_s, timeout_ms / 1000)
    return time.time() + budget_s


async def read_limited(chunks: AsyncIterator[bytes], declared_length: str | None, limit: int, what: str) -> bytes:
    # isdigit() alone also accepts digits int() refuses, such as "²".
    announced = declared_length is not None and declared_length.isascii() and declared_length.isdigit()
    if announced and int(declared_length) > limit:
        raise TooLarge(f"{what} is {int(declared_length)} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"{what} is larger than the limit of {limit} bytes")
    return bytes(body)


def json_document(body: bytes) -> object:
    """The parsed JSON body; anything unparsable is the client's 400."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from exc
    except RecursionError as exc:
        # Python's parser recurses once per nesting level, so "[[[[..." well within the size limit
        # would otherwise escape as a server error.
        raise BadRequest("malformed JSON body: nested too deeply") from exc


def images_from_body(body: bytes, content_type: str, max_images: int) -> list[bytes]:
    if not body:
        raise BadRequest("empty request body: send an image (JPEG, PNG or WebP) or JSON {\"image\": \"<base64>\"}")
    if content_type.split(";")[0].strip().lower() != "application/json":
        return [body]
    doc = json_document(body)
    if not isinstance(doc, dict) or len(doc.keys() & {"image", "images"}) != 1:
        raise BadRequest('JSON body must be an object with exactly one of "image" or "images"')
    encoded = [doc["image"]] if "image" in doc else doc["images"]
    if not isinstance(encoded, list) or not encoded:
        raise BadRequest('"images" must be a non-empty list of base64 strings')
    if len(encoded) > max_images:
        raise TooLarge(f"{len(encoded)} images in one request; the limit is {max_images}")
    return [decode_base64(item, i) for i, item in enumerate(encoded)]


def decode_base64(item: object, index: int) -> bytes:
    if not isinstance(item, str):
        raise BadRequest(f"image {index} must be a base64 string")
    if item.startswith("data:"):
        media, comma, item = item[5:].partition(",")
        if not comma or not media.endswith(";base64"):
            raise BadRequest(f"image {index} is a data URL without base64 content: send data:image/...;base64,...")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"image {index} is not valid base64: {exc}") from exc


class PixelsInFlight:
    """Decoded pixels the ingress holds for all requests at once: each request's images are bounded, but they
    live until the replies come back and many requests run at once. Used from the event loop only: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, pixels: int) -> None:
        if self.held + pixels > self.limit:
            raise ServiceBusyError(f"the service holds {self.held} decoded pixels of other requests, and this "
                             f"one's {pixels} would pass its limit of {self.limit}; retry in a moment", retry_after_s=1)
        self.held += pixels

    def give_back(self, pixels: int) -> None:
        self.held -= pixels
