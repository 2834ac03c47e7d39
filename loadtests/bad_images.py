"""Predict cases of the bad-input corpus: image bodies (raw and JSON/base64), bad and valid side by side.

Grey, palette, alpha, CMYK and 16-bit images are valid inputs (the service converts them to RGB),
so they are here as cases that must answer 200 beside the ones that must be refused.
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib

from PIL import Image

from . import png_bytes
from .corpus_case import Case, Limits

PNG, JPEG, JSON = "image/png", "image/jpeg", "application/json"
UNDECODABLE = "cannot decode image"


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def noise(mode: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    bands = {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    if mode == "1":
        return Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).convert("1")
    return Image.frombytes(mode, size, rng.randbytes(size[0] * size[1] * bands))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A baseline JPEG whose frame header (SOF0) declares another size; the data stays small."""
    at = jpeg.index(b"\xff\xc0") + 5  # marker, length (2), precision (1), then height and width
    return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4 :]


class PredictCases:
    """Builds the cases; `add` keeps their order, which is the manifest's."""

    def __init__(self, task: str, limits: Limits, seed: int) -> None:
        self.path = f"/v1/tasks/{task}/predict"
        self.limits, self.rng, self.cases = limits, random.Random(seed), []
        self.rgb_png = encode(noise("RGB", (20, 20), self.rng), "PNG")
        self.rgb_jpeg = encode(noise("RGB", (24, 18), self.rng), "JPEG", quality=90)

    def add(self, name: str, category: str, status: int, fragment: str | None, body: bytes | None,
            content_type: str | None = PNG, **extra) -> None:
        self.cases.append(Case(name, category, "POST", extra.pop("path", self.path), status, fragment, body,
                               content_type, **extra))

    def json(self, name: str, category: str, status: int, fragment: str | None, doc: object, **extra) -> None:
        self.add(name, category, status, fragment, json.dumps(doc).encode(), JSON, **extra)

    def build(self) -> list[Case]:
        for part in (self.valid, self.truncated, self.corrupt, self.wrong_formats, self.empty, self.oversized,
                     self.bombs, self.huge_dimensions, self.malformed_json, self.bad_base64, self.json_shapes):
            part()
        return self.cases

    def valid(self) -> None:
        c, rng = "valid-image", self.rng
        self.add("rgb-png", c, 200, None, self.rgb_png)
        self.add("rgb-jpeg", c, 200, None, self.rgb_jpeg, JPEG)
        for mode in ("L", "LA", "RGBA", "1"):
            self.add(f"png-mode-{mode.lower()}", c, 200, None, encode(noise(mode, (17, 13), rng), "PNG"),
                     note="converted to RGB")
        palette = noise("RGB", (16, 16), rng).convert("P")
        self.add("png-palette", c, 200, None, encode(palette, "PNG"))
        self.add("png-palette-transparency", c, 200, None, encode(palette, "PNG", transparency=0))
        self.add("png-grey-16bit", c, 200, None, encode(Image.frombytes("I;16", (9, 7), rng.randbytes(126)), "PNG"),
                 note="16-bit grey keeps its top 8 bits")
        for name, depth, colour in (("rgb-16bit", 16, 2), ("rgba-16bit", 16, 6), ("grey-alpha-16bit", 16, 4),
                                    ("grey-2bit", 2, 0), ("grey-4bit", 4, 0)):
            self.add(f"png-{name}", c, 200, None, png_bytes.png(11, 9, depth, colour, seed=len(name)))
        self.add("jpeg-grey", c, 200, None, encode(noise("L", (16, 16), rng), "JPEG"), JPEG)
        self.add("jpeg-cmyk", c, 200, None, encode(noise("CMYK", (16, 12), rng), "JPEG"), JPEG)
        self.add("jpeg-progressive", c, 200, None, encode(noise("RGB", (32, 32), rng), "JPEG", progressive=True), JPEG)
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotated; decoding ignores it
        self.add("jpeg-exif", c, 200, None, encode(noise("RGB", (16, 16), rng), "JPEG", exif=exif), JPEG)
        self.add("png-1x1", c, 200, None, encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"))
        self.add("jpeg-1x1", c, 200, None, encode(Image.new("RGB", (1, 1), (9, 9, 9)), "JPEG"), JPEG)
        gradient = Image.linear_gradient("L").resize((24, 20))  # not drawn from rng: the cases above keep their bytes
        self.add("webp-lossy", c, 200, None, encode(gradient.convert("RGB"), "WEBP"), "image/webp")
        self.add("webp-lossless-rgba", c, 200, None, encode(gradient.convert("RGBA"), "WEBP", lossless=True),
                 "image/webp")
        frames = [gradient.convert("RGB"), gradient.rotate(90).convert("RGB")]
        self.add("webp-animated", c, 200, None, encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
                 "image/webp", note="the first frame is classified")
        side = int(self.limits.max_image_pixels ** 0.5)
        self.add("png-at-pixel-limit", c, 200, None, png_bytes.png(side, side, 8, 0),
                 note=f"{side}x{side} = max_image_pixels exactly")
        self.add("png-1x1000", c, 200, None, png_bytes.png(1, 1000, 8, 0), note="extreme aspect ratio")
        self.add("png-1000x1", c, 200, None, png_bytes.png(1000, 1, 8, 2))
        self.add("jpeg-labelled-png", c, 200, None, self.rgb_jpeg, PNG, note="the bytes decide, not the label")
        self.add("png-no-content-type", c, 200, None, self.rgb_png, None)
        self.add("png-octet-stream", c, 200, None, self.rgb_png, "application/octet-stream")
        self.add("png-text-plain", c, 200, None, self.rgb_png, "text/plain")
        self.add("png-trailing-bytes-at-body-limit", c, 200, None, self.rgb_png, pad_to=self.limits.max_request_bytes,
                 note="exactly max_request_bytes; bytes after IEND are ignored")
        self.json("json-image", c, 200, None, {"image": b64(self.rgb_png)})
        self.json("json-images-at-limit", c, 200, None,
                  {"images": [b64(self.rgb_png), b64(self.rgb_jpeg)] * (self.limits.max_images_per_request // 2)})
        self.add("json-charset", c, 200, None, json.dumps({"image": b64(self.rgb_jpeg)}).encode(),
                 "Application/JSON; charset=utf-8")
        self.add("backbone-embedding", c, 200, None, self.rgb_png, path="/v1/tasks/__backbone__/predict")

    def truncated(self) -> None:
        c, big_png = "truncated-image", encode(noise("RGB", (32, 32), self.rng), "PNG")
        for cut in (4, 8, 20, 33, len(big_png) // 2, len(big_png) - 100):
            self.add(f"png-cut-at-{cut}", c, 400, UNDECODABLE, big_png[:cut])
        jpeg = encode(noise("RGB", (32, 32), self.rng), "JPEG")
        for cut in (2, 100, len(jpeg) // 2, len(jpeg) - 100):
            self.add(f"jpeg-cut-at-{cut}", c, 400, UNDECODABLE, jpeg[:cut], JPEG)
        webp = encode(Image.linear_gradient("L").convert("RGB"), "WEBP")
        for cut in (10, len(webp) // 2):
            self.add(f"webp-cut-at-{cut}", c, 400, UNDECODABLE, webp[:cut], "image/webp")

    def corrupt(self) -> None:
        c, good = "corrupt-image", png_bytes.png(16, 16, 8, 2, seed=3)
        self.add("png-bad-signature", c, 400, UNDECODABLE, good[:1] + b"Q" + good[2:])
        head = png_bytes.SIGNATURE + png_bytes.chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0), crc=1)
        self.add("png-bad-header-crc", c, 400, UNDECODABLE, head + good[33:])
        self.add("png-colour-type-5", c, 400, UNDECODABLE,
                 png_bytes.SIGNATURE + png_bytes.ihdr(16, 16, 8, 5) + good[33:])
        self.add("png-bit-depth-3", c, 400, UNDECODABLE, png_bytes.SIGNATURE + png_bytes.ihdr(16, 16, 3, 0) + good[33:])
        self.add("png-idat-not-zlib", c, 400, UNDECODABLE, png_bytes.png(16, 16, 8, 2, idat=b"\0\0not zlib at all"))
        self.add("png-idat-too-short", c, 400, UNDECODABLE,
                 png_bytes.png(16, 16, 8, 2, idat=zlib.compress(b"\0" * 40)))
        self.add("png-bad-filter-type", c, 400, UNDECODABLE,
                 png_bytes.png(4, 4, 8, 0, idat=zlib.compress(b"\x09\0\0\0\0" * 4)))
        self.add("png-no-idat", c, 400, UNDECODABLE, good[:33] + png_bytes.chunk(b"IEND", b""))
        self.add("png-palette-missing", c, 200, None, png_bytes.png(4, 4, 8, 3),
                 note="a palette image without its PLTE chunk decodes with Pillow's default palette")
        jpeg = self.rgb_jpeg
        self.add("jpeg-soi-eoi-only", c, 400, UNDECODABLE, b"\xff\xd8\xff\xd9", JPEG)
        self.add("jpeg-soi-then-garbage", c, 400, UNDECODABLE, b"\xff\xd8" + self.rng.randbytes(200), JPEG)
        dht = jpeg.index(b"\xff\xc4")
        self.add("jpeg-huffman-tables-zeroed", c, 400, UNDECODABLE, jpeg[: dht + 4] + b"\0" * 60 + jpeg[dht + 64 :],
                 JPEG)
        sof = jpeg.index(b"\xff\xc0")
        self.add("jpeg-zero-components", c, 400, UNDECODABLE, jpeg[: sof + 9] + b"\0" + jpeg[sof + 10 :], JPEG)
        for size in (1, 16, 1000, 10_000):
            self.add(f"random-bytes-{size}", c, 400, UNDECODABLE, self.rng.randbytes(size), "application/octet-stream")

    def wrong_formats(self) -> None:
        c, image = "wrong-format", noise("RGB", (12, 12), self.rng)
        for fmt, params in (("GIF", {}), ("BMP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"}),
                            ("ICO", {}), ("PPM", {}), ("TGA", {}), ("PCX", {}),
                            ("JPEG2000", {}), ("SGI", {}), ("QOI", {}), ("DDS", {})):
            name = f"{fmt.lower()}{'-' + '-'.join(map(str, params.values())) if params else ''}"
            self.add(name, c, 400, f"unsupported image format {fmt}; send JPEG, PNG or WebP", encode(image, fmt, **params))
        for name, data in (("pdf", b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"),
                           ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
                           ("html", b"<!doctype html><html><body><img src=x></body></html>"),
                           ("text", "just some text, not an image \u00e9\n".encode()),
                           ("zip", b"PK\x05\x06" + b"\0" * 18),
                           ("gzip", b"\x1f\x8b\x08\0\0\0\0\0\0\x03\x03\0\0\0\0\0\0\0\0\0"),
                           ("elf", b"\x7fELF\x02\x01\x01" + b"\0" * 57), ("shell", b"#!/bin/sh\nrm -rf /\n"),
                           ("json-as-png", json.dumps({"image": b64(self.rgb_png)}).encode())):
            self.add(f"not-an-image-{name}", c, 400, UNDECODABLE, data)

    def empty(self) -> None:
        c, fragment = "empty-body", "empty request body"
        for name, content_type in (("png", PNG), ("jpeg", JPEG), ("octet-stream", "application/octet-stream"),
                                   ("no-content-type", None), ("json", JSON)):
            self.add(f"empty-{name}", c, 400, fragment, b"", content_type)
        self.add("empty-chunked", c, 400, fragment, b"", PNG, chunked=True)
        self.json("json-empty-base64-image", c, 400, "image 0: empty image body", {"image": ""})

    def oversized(self) -> None:
        c, limit = "oversized-body", self.limits.max_request_bytes
        block = b"\0" * 1024
        repeat = limit // 1024 + 44  # 300 KiB for the 256 KiB limit
        self.add("raw-over-limit", c, 413, f"request body is {repeat * 1024} bytes; the limit is {limit}", block,
                 body_repeat=repeat)
        self.add("raw-over-limit-by-one", c, 413, f"request body is {limit + 1} bytes; the limit is {limit}",
                 self.rgb_png, pad_to=limit + 1)
        self.add("raw-over-limit-chunked", c, 413, f"larger than the limit of {limit} bytes", block, body_repeat=repeat,
                 chunked=True, note="no Content-Length: the limit holds while reading")
        prefix = json.dumps({"image": b64(self.rgb_png)}).encode()
        self.add("json-over-limit", c, 413, f"the limit is {limit}", prefix, JSON, pad_to=limit + 4096)
        self.add("json-over-limit-chunked", c, 413, f"larger than the limit of {limit} bytes", prefix, JSON,
                 pad_to=limit + 4096, chunked=True)

    def bombs(self) -> None:
        c, limit = "decompression-bomb", self.limits.max_image_pixels
        self.add("png-1bit-20000x20000", c, 413, "decompression bomb", encode(Image.new("1", (20000, 20000)), "PNG"),
                 note="~50 KB that would decode to 400 M pixels; Pillow's own bomb check fires first")
        self.add("png-1bit-9500x9500", c, 413, f"9500x9500 = 90250000 pixels; the limit is {limit}",
                 encode(Image.new("1", (9500, 9500)), "PNG"))
        self.add("png-grey-3000x3000", c, 413, f"3000x3000 = 9000000 pixels; the limit is {limit}",
                 encode(Image.new("L", (3000, 3000), 7), "PNG"))
        self.add("png-rgb-2000x600", c, 413, f"2000x600 = 1200000 pixels; the limit is {limit}",
                 encode(Image.new("RGB", (2000, 600), (1, 2, 3)), "PNG"))
        self.add("webp-grey-3000x3000", c, 413, f"3000x3000 = 9000000 pixels; the limit is {limit}",
                 encode(Image.new("L", (3000, 3000), 7), "WEBP"), "image/webp")
        self.json("json-bomb-among-valid", c, 413, "image 1: image is 3000x3000",
                  {"images": [b64(self.rgb_png), b64(encode(Image.new("L", (3000, 3000)), "PNG"))]})

    def huge_dimensions(self) -> None:
        c, limit = "huge-dimensions", self.limits.max_image_pixels
        side = int(limit ** 0.5)
        for width, height, fragment in ((100_000, 100_000, "decompression bomb"), (2**31 - 1, 1, "decompression bomb"),
                                        (1, limit + 1, f"1x{limit + 1} = {limit + 1} pixels"),
                                        (side + 1, side, f"the limit is {limit}")):
            self.add(f"png-header-{width}x{height}", c, 413, fragment, png_bytes.header_only(width, height),
                     note="the header's size is checked before any pixel is decoded")
        for width, height, fragment in ((65535, 65535, "decompression bomb"),
                                        (side + 1, side, f"the limit is {limit}")):
            self.add(f"jpeg-header-{width}x{height}", c, 413, fragment, with_jpeg_size(self.rgb_jpeg, width, height),
                     JPEG)
        self.add("png-header-0x16", c, 400, "image 0", png_bytes.header_only(0, 16))
        self.add("png-header-16x0", c, 400, "image 0", png_bytes.header_only(16, 0))
        self.add("jpeg-header-0x16", c, 400, "image 0", with_jpeg_size(self.rgb_jpeg, 0, 16), JPEG)

    def malformed_json(self) -> None:
        c, fragment = "malformed-json", "malformed JSON body"
        for name, body in (("unclosed", b'{"image": "abc"'), ("single-quotes", b"{'image': 'abc'}"),
                           ("trailing-comma", b'{"image": "abc",}'), ("bare-word", b"image"),
                           ("nul-byte", b'{"image": "\x00"}'), ("invalid-utf8", b'{"image": "\xff\xfe"}'),
                           ("comment", b'{"image": "abc" /* hi */}'),
                           ("two-documents", b'{"image": "a"} {"image": "b"}')):
            self.add(f"json-{name}", c, 400, fragment, body, JSON)
        for name, unit, repeat in (("arrays", b"[", 100_000), ("objects", b'{"a":', 50_000)):
            self.add(f"json-deep-nesting-{name}", c, 400, fragment, unit, JSON, body_repeat=repeat,
                     note="nesting deeper than Python's recursion limit, within the size limit")

    def bad_base64(self) -> None:
        c = "bad-base64"
        encoded = b64(self.rgb_png)
        for name, value in (("symbols", "@@@@"), ("bad-padding", encoded[:-2] + "="),
                            ("whitespace", encoded[:40] + "\n" + encoded[40:]),
                            ("data-url-bad-content", "data:image/png;base64,@@@@"), ("url-safe-alphabet", "-_-_" * 8),
                            ("non-ascii", "\u00e9\u00e9\u00e9\u00e9"), ("lone-surrogate", "\ud800abc")):
            self.json(f"base64-{name}", c, 400, "image 0 is not valid base64", {"image": value})
        self.json("base64-data-url-not-base64", c, 400, "image 0 is a data URL without base64 content",
                  {"image": "data:image/png," + encoded})
        self.json("base64-second-image-bad", c, 400, "image 1 is not valid base64", {"images": [encoded, "%%%%"]})
        self.json("base64-of-garbage", c, 400, f"image 0: {UNDECODABLE}", {"image": b64(b"garbage" * 10)})
        self.json("base64-of-gif", c, 400, "unsupported image format GIF",
                  {"image": b64(encode(noise("RGB", (4, 4), self.rng), "GIF"))})

    def json_shapes(self) -> None:
        c, one_of = "json-shape", 'exactly one of "image" or "images"'
        for name, doc in (("array", [b64(self.rgb_png)]), ("string", "abc"), ("number", 3), ("null", None),
                          ("no-image-key", {"picture": "abc"}), ("both-keys", {"image": "a", "images": ["a"]}),
                          ("empty-object", {})):
            self.json(f"json-{name}", c, 400, one_of, doc)
        for name, value in (("null", None), ("number", 1e300), ("list", ["a"]), ("object", {"a": 1}), ("bool", True)):
            self.json(f"json-image-{name}", c, 400, "image 0 must be a base64 string", {"image": value})
        for name, value in (("empty-list", []), ("string", "abc"), ("object", {"0": "a"}), ("null", None)):
            self.json(f"json-images-{name}", c, 400, '"images" must be a non-empty list', {"images": value})
        self.json("json-images-item-number", c, 400, "image 1 must be a base64 string",
                  {"images": [b64(self.rgb_png), 7]})
        over = self.limits.max_images_per_request + 1
        self.json("json-too-many-images", c, 413, f"{over} images in one request; the limit is {over - 1}",
                  {"images": [b64(self.rgb_png)] * over})
        budget, side = self.limits.max_request_pixels, int(self.limits.max_image_pixels ** 0.5)
        full = b64(png_bytes.png(side, side, 8, 0))
        fits = budget // (side * side)
        self.json("json-images-at-request-pixels", c, 200, None, {"images": [full] * fits},
                  note=f"{fits} images at max_image_pixels: max_request_pixels exactly")
        self.json("json-images-over-request-pixels", c, 413,
                  f"hold {(fits + 1) * side * side} pixels together; the limit is {budget}",
                  {"images": [full] * (fits + 1)})
        self.add("json-nan-literal", c, 400, "image 0 must be a base64 string", b'{"image": NaN}', JSON)
