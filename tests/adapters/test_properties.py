"""Property tests of the two parsers that take bytes from clients: images and adapter files.

Whatever the bytes, each raises only its own error type (which the HTTP layer maps to a 4xx), and
every valid input round-trips.
"""

from __future__ import annotations

import io
import json
import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from mosaserve.adapters.backbone import load_backbone
from mosaserve.adapters.config import METHODS, AdapterConfig
from mosaserve.adapters.errors import AdapterFileError
from mosaserve.adapters.file_format import AdapterHeader, encode_adapter, expected_shapes, load_adapter
from mosaserve.adapters.images import BadImageError, decode_image

from ..conftest import TINY_VIT

QUICK = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "CMYK")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def info():
    return load_backbone(TINY_VIT)[1]


def encoded_image(mode: str, width: int, height: int, fmt: str, seed: int) -> bytes:
    raw = torch.randint(0, 256, (width * height * 4,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    image = Image.frombytes("RGBA", (width, height), raw.numpy().tobytes())
    if mode in ("I;16", "P"):  # via grey / RGB: Pillow makes these from those
        image = image.convert("L" if mode == "I;16" else "RGB")
    image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def damage(buffer: bytearray, data, max_cut: int) -> tuple[str, int]:
    """One random flip, cut or insertion in place; returns which and where."""
    at = data.draw(st.integers(0, len(buffer) - 1))
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if kind == "flip":
        buffer[at] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        del buffer[at:at + data.draw(st.integers(1, max_cut))]
    else:
        buffer[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    return kind, at


@QUICK
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_decode_or_raise_bad_image_error_only(data):
    try:
        decoded = decode_image(data, max_pixels=100_000)
    except BadImageError:
        return
    assert decoded.dtype == torch.uint8 and decoded.dim() == 3 and decoded.shape[0] == 3


@QUICK
@given(st.sampled_from(MODES), st.integers(1, 40), st.integers(1, 40), st.sampled_from(["PNG", "JPEG"]),
       st.integers(0, 2**16))
def test_every_small_png_or_jpeg_decodes_to_uint8_rgb_of_its_size(mode, width, height, fmt, seed):
    fmt = "JPEG" if mode == "CMYK" else fmt if mode in ("L", "RGB") else "PNG"  # what each format can hold
    decoded = decode_image(encoded_image(mode, width, height, fmt, seed))
    assert decoded.dtype == torch.uint8 and tuple(decoded.shape) == (3, height, width)


@QUICK
@given(st.sampled_from(["PNG", "JPEG"]), st.integers(0, 2**16), st.data())
def test_damaged_images_decode_or_raise_bad_image_error_only(fmt, seed, data):
    original = bytearray(encoded_image("RGB", 24, 16, fmt, seed))
    for _ in range(data.draw(st.integers(1, 8))):
        damage(original, data, max_cut=64)
        if not original:
            break
    try:
        decoded = decode_image(bytes(original), max_pixels=1_000_000)
    except BadImageError:
        return
    assert decoded.dtype == torch.uint8 and decoded.dim() == 3 and decoded.shape[0] == 3


def random_adapter(info, method: str, r: int, labels: list[str], seed: int) -> tuple[AdapterHeader, dict]:
    header = AdapterHeader(AdapterConfig(method=method, r=r), info, tuple(labels), {"seed": seed})
    generator = torch.Generator().manual_seed(seed)
    return header, {name: torch.randn(shape, generator=generator) for name, shape in expected_shapes(header).items()}


labels = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True)
adapters = st.tuples(st.sampled_from(METHODS), st.integers(1, 6), labels, st.integers(0, 2**16))


@QUICK
@given(adapters)
def test_every_valid_adapter_file_round_trips(info, spec):
    header, tensors = random_adapter(info, *spec)
    loaded = load_adapter(encode_adapter(header, tensors), expected_fingerprint=info.fingerprint)
    assert loaded.header == header
    assert loaded.tensors.keys() == tensors.keys() and all(torch.equal(loaded.tensors[k], tensors[k]) for k in tensors)


@QUICK
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_raise_adapter_file_error_only(data):
    with pytest.raises(AdapterFileError):
        load_adapter(data)


@QUICK
@given(adapters, st.data())
def test_damaged_adapter_files_raise_adapter_file_error_only(info, spec, data):
    valid = bytearray(encode_adapter(*random_adapter(info, *spec)))
    header_end = 8 + struct.unpack("<Q", valid[:8])[0]
    kind, at = damage(valid, data, max_cut=256)
    try:
        loaded = load_adapter(bytes(valid), expected_fingerprint=info.fingerprint)
    except AdapterFileError:
        return
    # Only the (unsigned) JSON header may change unnoticed, and only into another valid header:
    # a change to tensor bytes is always caught by the recorded sha256.
    assert kind == "flip" and at < header_end, (kind, at, header_end)
    assert loaded.tensors.keys() == set(expected_shapes(loaded.header))


@QUICK
@given(adapters, st.sampled_from(["format", "format_version", "adapter", "backbone", "num_classes", "labels",
                                  "provenance", "content_sha256", "adapter.r", "adapter.scale", "adapter.method",
                                  "adapter.target_blocks", "backbone.depth", "backbone.input_size", "backbone.mean",
                                  "backbone.kwargs", "backbone.fingerprint"]), JSON_VALUES)
@example(("mosa", 4, ["a", "b"], 0), "adapter.scale", float("nan"))  # once accepted: every prediction NaN
def test_any_json_value_in_any_header_field_raises_adapter_file_error_only(info, spec, field, value):
    from safetensors.torch import load as safetensors_load
    from safetensors.torch import save as safetensors_save

    valid = encode_adapter(*random_adapter(info, *spec))
    header_len = struct.unpack("<Q", valid[:8])[0]
    raw = json.loads(json.loads(valid[8:8 + header_len])["__metadata__"]["mosaserve"])
    target, _, key = field.rpartition(".")
    (raw[target] if target else raw)[key] = value
    forged = safetensors_save(safetensors_load(valid), metadata={"mosaserve": json.dumps(raw)})
    try:
        loaded = load_adapter(forged, expected_fingerprint=info.fingerprint)
    except AdapterFileError:
        return
    cfg = loaded.header.adapter
    assert all(math.isfinite(v) for v in (cfg.scale, cfg.dropout, cfg.lora_alpha, cfg.consistency_weight))
    assert loaded.tensors["head.out.weight"].shape[0] == loaded.header.num_classes == len(loaded.header.labels)
