"""PNG files written chunk by chunk, for what Pillow will not write: 16-bit colour, forged sizes, bad CRCs."""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """A chunk with its length and CRC (a wrong `crc` forges one)."""
    checksum = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum & 0xFFFFFFFF)


def ihdr(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))


def scanlines(width: int, height: int, bit_depth: int, colour_type: int, seed: int) -> bytes:
    """Raw image data (filter byte 0 per row) with deterministic pseudo-random samples."""
    row_bytes = (width * CHANNELS[colour_type] * bit_depth + 7) // 8
    rows = []
    for y in range(height):
        rows.append(b"\0" + bytes((seed * 131 + y * 17 + x * 29) % 256 for x in range(row_bytes)))
    return b"".join(rows)


def png(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, seed: int = 0,
        idat: bytes | None = None, extra: bytes = b"") -> bytes:
    """A complete PNG; `idat` replaces the compressed data, `extra` goes before IDAT (e.g. PLTE, tRNS)."""
    data = zlib.compress(scanlines(width, height, bit_depth, colour_type, seed), 9) if idat is None else idat
    return SIGNATURE + ihdr(width, height, bit_depth, colour_type) + extra + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def header_only(width: int, height: int, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A PNG whose header declares a size and whose data is a few bytes: it costs nothing to send."""
    return png(width, height, bit_depth, colour_type, idat=zlib.compress(b"\0" * 64))
