"""The one-file adapter format: a .safetensors file per task version.

Tensors: the merged adapter and the head (names in `model.py`). Metadata: one JSON document under
the key "mosaserve" that records the format, the method and its hyper-parameters, the backbone
(timm name, kwargs, weights fingerprint, input size, mean/std), the classes, free-form provenance
and a sha256 of the tensor content, so any edit after writing is caught.

Loading validates everything and raises `AdapterFileError` (or `BackboneMismatchError`) naming
what is wrong. Only safetensors and JSON are ever parsed; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor

from .atomic_write import write_atomically
from .backbone import BackboneInfo
from .config import AdapterConfig, AdapterKind, is_finite_number
from .errors import AdapterConfigError, AdapterFileError, BackboneMismatchError
from .heads import head_shapes

FORMAT_NAME = "mosaserve-adapter"
FORMAT_VERSION = 2  # 2 added the head kind and the backbone's patch count; 1 (pooled head only) still loads
METADATA_KEY = "mosaserve"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
ALLOWED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEADER_FIELDS = {"format", "format_version", "adapter", "backbone", "num_classes", "labels", "provenance", "content_sha256"}
# A file records every hyper-parameter: one left out would silently take today's default instead.
ADAPTER_FIELDS = {f.name for f in fields(AdapterConfig)}
BACKBONE_FIELDS = {
    "name": str, "kwargs": dict, "fingerprint": str, "num_features": int, "depth": int,
    "input_size": list, "mean": list, "std": list, "interpolation": str, "crop_pct": (int, float),
    "num_patches": (int, type(None)),
}
# What format 1 lacked; its files are read with the head they had.
FORMAT_1_ADAPTER_FIELDS = ADAPTER_FIELDS - {"head", "head_rank"}
FORMAT_1_BACKBONE_FIELDS = {k: v for k, v in BACKBONE_FIELDS.items() if k != "num_patches"}
FORMAT_1_HEAD = {"head": "pooled"}

Source = Union[str, os.PathLike, bytes]


@dataclass(frozen=True)
class AdapterHeader:
    """Everything the file says about its tensors."""

    adapter: AdapterConfig
    backbone: BackboneInfo
    labels: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self, content_sha256: str) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "adapter": self.adapter.to_dict(),
            "backbone": self.backbone.to_dict(),
            "num_classes": self.num_classes,
            "labels": list(self.labels),
            "provenance": dict(self.provenance),
            "content_sha256": content_sha256,
        }


@dataclass(frozen=True)
class AdapterFile:
    header: AdapterHeader
    tensors: dict[str, Tensor]


def expected_shapes(header: AdapterHeader) -> dict[str, tuple[int, ...]]:
    """Every tensor name the file must hold, with its shape."""
    cfg, dim, r = header.adapter, header.backbone.num_features, header.adapter.r
    shapes: dict[str, tuple[int, ...]] = {}
    for block in cfg.resolve_blocks(header.backbone.depth):
        if cfg.kind is AdapterKind.BOTTLENECK:
            shapes.update({
                f"blocks.{block}.norm.weight": (dim,), f"blocks.{block}.norm.bias": (dim,),
                f"blocks.{block}.down.weight": (r, dim), f"blocks.{block}.down.bias": (r,),
                f"blocks.{block}.up.weight": (dim, r), f"blocks.{block}.up.bias": (dim,),
            })
        else:  # lora on timm's fused qkv projection: dim -> 3 * dim
            shapes.update({f"blocks.{block}.qkv.lora_a": (r, dim), f"blocks.{block}.qkv.lora_b": (3 * dim, r)})
    shapes.update(head_shapes(cfg, dim, header.backbone.num_patches or 0, header.num_classes))
    return shapes


def content_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over name, dtype, shape and bytes of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# ---------------------------------------------------------------- writing


def encode_adapter(header: AdapterHeader, tensors: dict[str, Tensor]) -> bytes:
    """Validates and serialises an adapter; what it returns always loads back."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    validate_tensors(header, tensors)
    metadata = {METADATA_KEY: json.dumps(header.to_dict(content_digest(tensors)), sort_keys=True)}
    return safetensors_save(tensors, metadata=metadata)


def save_adapter(path: str | os.PathLike, header: AdapterHeader, tensors: dict[str, Tensor]) -> Path:
    """Writes the file atomically (temp file, fsync, rename): never a half-written adapter."""
    return write_atomically(path, encode_adapter(header, tensors))


# ---------------------------------------------------------------- reading


def load_adapter(
    source: Source, expected_fingerprint: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> AdapterFile:
    """Reads and fully validates an adapter file (a path or the file's bytes).

    `expected_fingerprint` is the weights fingerprint of the backbone it will run on; an adapter
    trained on another backbone raises `BackboneMismatchError`.
    """
    data = _read_bytes(source, max_bytes)
    metadata = _read_safetensors_header(data).get("__metadata__", {})
    if METADATA_KEY not in metadata:
        raise AdapterFileError(f"not a mosaserve adapter: the safetensors metadata has no {METADATA_KEY!r} entry")
    header, digest = parse_header(metadata[METADATA_KEY])
    _check_fingerprint(header, expected_fingerprint)
    try:
        tensors = safetensors_load(data)
    except Exception as exc:  # noqa: BLE001 - the Rust reader's errors are all "corrupt file"
        raise AdapterFileError(f"corrupt safetensors data: {exc}") from exc
    validate_tensors(header, tensors)
    if content_digest(tensors) != digest:
        raise AdapterFileError("tensor content does not match the recorded sha256: the file was modified or damaged")
    return AdapterFile(header, tensors)


def read_header(path: str | os.PathLike, expected_fingerprint: str, max_bytes: int = DEFAULT_MAX_BYTES) -> AdapterHeader:
    """A stored adapter file's header, reading its first bytes only; its tensors are validated when loaded.
    A file shorter than its header says (cut off) is refused here."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            start = file.read(8)
            header_len = struct.unpack("<Q", start)[0] if len(start) == 8 else 0
            start += file.read(min(header_len, MAX_HEADER_BYTES))
    except OSError as exc:
        raise AdapterFileError(f"cannot read adapter file {str(path)!r}: {exc.strerror}") from exc
    if size > max_bytes:
        raise AdapterFileError(f"adapter file is {size} bytes, over the limit of {max_bytes}")
    safetensors_header = _read_safetensors_header(start)
    metadata = safetensors_header.get("__metadata__", {})
    described = 8 + header_len + _data_bytes(safetensors_header)
    if size != described:
        raise AdapterFileError(f"adapter file {str(path)!r} is {size} bytes, not the {described} its header "
                               "describes: cut off or padded")
    if METADATA_KEY not in metadata:
        raise AdapterFileError(f"not a mosaserve adapter: the safetensors metadata has no {METADATA_KEY!r} entry")
    header = parse_header(metadata[METADATA_KEY])[0]
    _check_fingerprint(header, expected_fingerprint)
    return header


def _data_bytes(safetensors_header: dict) -> int:
    """Where the tensor data ends, by the safetensors header's offsets."""
    try:
        return max((int(entry["data_offsets"][1]) for key, entry in safetensors_header.items()
                    if key != "__metadata__"), default=0)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise AdapterFileError(f"not a safetensors file: malformed tensor entry ({exc!r})") from exc


def _check_fingerprint(header: AdapterHeader, expected: str | None) -> None:
    if expected is not None and header.backbone.fingerprint != expected:
        raise BackboneMismatchError(
            f"adapter was trained on backbone {header.backbone.name} with weights fingerprint "
            f"{header.backbone.fingerprint[:16]}..., but the loaded backbone's is {expected[:16]}..."
        )


def _read_bytes(source: Source, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise AdapterFileError(f"cannot read adapter file {str(path)!r}: {exc.strerror}") from exc
        if size > max_bytes:
            raise AdapterFileError(f"adapter file is {size} bytes, over the limit of {max_bytes}")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise AdapterFileError(f"adapter file is {len(data)} bytes, over the limit of {max_bytes}")
    return data


def _read_safetensors_header(data: bytes) -> dict:
    """The safetensors header (its __metadata__ checked), read by hand before the tensor reader sees the bytes."""
    if len(data) < 8:
        raise AdapterFileError(f"not a safetensors file: {len(data)} bytes is shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise AdapterFileError(
            f"not a safetensors file: header length field says {header_len} bytes, file has {len(data) - 8} after it"
        )
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, an integer of 4,300+ digits, nested too deep
        raise AdapterFileError(f"not a safetensors file: header is not JSON ({exc})") from exc
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise AdapterFileError("not a safetensors file: malformed __metadata__")
    return header


def parse_header(text: str) -> tuple[AdapterHeader, str]:
    """Parses and validates the JSON header; returns it with the recorded content digest."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:  # as for the safetensors header
        raise AdapterFileError(f"adapter header is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise AdapterFileError("adapter header must be a JSON object")
    _require_exact_fields("adapter header", raw, HEADER_FIELDS)
    if raw["format"] != FORMAT_NAME:
        raise AdapterFileError(f"format is {raw['format']!r}, expected {FORMAT_NAME!r}")
    version = raw["format_version"]
    if type(version) is not int or version not in (1, FORMAT_VERSION):
        raise AdapterFileError(f"format_version {version!r} is not supported (this reader: 1 and {FORMAT_VERSION})")
    if not isinstance(raw["adapter"], dict):
        raise AdapterFileError("header field 'adapter' must be an object")
    _require_exact_fields("adapter config", raw["adapter"], ADAPTER_FIELDS if version > 1 else FORMAT_1_ADAPTER_FIELDS)
    try:
        adapter = AdapterConfig.from_dict(raw["adapter"] if version > 1 else {**raw["adapter"], **FORMAT_1_HEAD})
    except AdapterConfigError as exc:
        raise AdapterFileError(str(exc)) from exc
    header = AdapterHeader(
        adapter=adapter,
        backbone=_parse_backbone(raw["backbone"], BACKBONE_FIELDS if version > 1 else FORMAT_1_BACKBONE_FIELDS),
        labels=_parse_labels(raw["labels"], raw["num_classes"]),
        provenance=_parse_provenance(raw["provenance"]),
    )
    digest = raw["content_sha256"]
    if not _is_hex_digest(digest):
        raise AdapterFileError("content_sha256 must be 64 hex characters")
    try:
        adapter.resolve_blocks(header.backbone.depth)
    except AdapterConfigError as exc:
        raise AdapterFileError(str(exc)) from exc
    if adapter.r > header.backbone.num_features:
        # A wider bottleneck adds nothing a full-rank one cannot, and a mixed batch pads every row's
        # adapter to the widest r in it: one huge r would make every batch it joins that large.
        raise AdapterFileError(f"r = {adapter.r} is wider than the backbone ({header.backbone.num_features} features)")
    if adapter.head.reads_patches and header.backbone.num_patches is None:
        raise AdapterFileError("a 'tokens' head needs the backbone's num_patches")
    return header, digest


def _require_exact_fields(what: str, raw: dict[str, Any], expected: set[str]) -> None:
    missing, extra = sorted(expected - set(raw)), sorted(set(raw) - expected)
    if missing:
        raise AdapterFileError(f"{what} is missing fields: {missing}")
    if extra:
        raise AdapterFileError(f"{what} has unknown fields: {extra}")


def _is_hex_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and is_finite_number(value)


def _parse_backbone(raw: Any, field_types: dict[str, Any]) -> BackboneInfo:
    if not isinstance(raw, dict):
        raise AdapterFileError("header field 'backbone' must be an object")
    _require_exact_fields("backbone", raw, set(field_types))
    for name, expected in field_types.items():
        if not isinstance(raw[name], expected) or isinstance(raw[name], bool):
            raise AdapterFileError(f"backbone field {name!r} has the wrong type: {raw[name]!r}")
    if not _is_hex_digest(raw["fingerprint"]):
        raise AdapterFileError("backbone fingerprint must be 64 hex characters")
    if raw["num_features"] < 1 or raw["depth"] < 1 or (raw.get("num_patches") is not None and raw["num_patches"] < 1):
        raise AdapterFileError("backbone num_features, depth and num_patches must be positive")
    size = raw["input_size"]
    if len(size) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise AdapterFileError(f"backbone input_size must be three positive integers, got {size!r}")
    for key in ("mean", "std"):
        if len(raw[key]) != size[0] or not all(_is_number(v) for v in raw[key]):
            raise AdapterFileError(f"backbone {key} must be {size[0]} finite numbers, got {raw[key]!r}")
    if not all(_is_number(v) and v > 0 for v in raw["std"]):
        raise AdapterFileError("backbone std must be positive")
    if not (_is_number(raw["crop_pct"]) and 0 < raw["crop_pct"] <= 1):
        raise AdapterFileError(f"backbone crop_pct must be in (0, 1], got {raw['crop_pct']!r}")
    return BackboneInfo(
        name=raw["name"], kwargs=raw["kwargs"], fingerprint=raw["fingerprint"], num_features=raw["num_features"],
        depth=raw["depth"], input_size=tuple(size), mean=tuple(raw["mean"]), std=tuple(raw["std"]),
        interpolation=raw["interpolation"], crop_pct=float(raw["crop_pct"]), num_patches=raw.get("num_patches"),
    )


def _parse_labels(raw: Any, num_classes: Any) -> tuple[str, ...]:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise AdapterFileError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(raw, list) or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in raw):
        raise AdapterFileError("labels must be a list of non-empty strings of at most 256 characters")
    if len(raw) != num_classes:
        raise AdapterFileError(f"num_classes is {num_classes} but {len(raw)} labels are given")
    if len(set(raw)) != len(raw):
        raise AdapterFileError("labels must be distinct")
    return tuple(raw)


def _parse_provenance(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or len(raw) > 64:
        raise AdapterFileError("provenance must be an object of at most 64 entries")
    for key, value in raw.items():
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
            raise AdapterFileError(f"provenance entry {key!r} must be a string, number or boolean")
    return dict(raw)


def validate_tensors(header: AdapterHeader, tensors: dict[str, Tensor]) -> None:
    """Names, shapes, dtypes and finiteness of the tensors against what the header implies."""
    expected = expected_shapes(header)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing:
        raise AdapterFileError(f"adapter file is missing tensors: {missing[:8]}")
    if extra:
        raise AdapterFileError(f"adapter file has unexpected tensors: {extra[:8]}")
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise AdapterFileError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape}")
        if tensor.dtype not in ALLOWED_DTYPES:
            raise AdapterFileError(f"tensor {name!r} has dtype {tensor.dtype}, expected one of {ALLOWED_DTYPES}")
    non_finite = _first_non_finite([(name, tensors[name]) for name in expected])
    if non_finite is not None:
        raise AdapterFileError(f"tensor {non_finite!r} holds NaN or infinite values")


def _first_non_finite(named: list[tuple[str, Tensor]]) -> str | None:
    """One check over all tensors at once: for adapter-sized tensors a check each costs more in dispatch
    than in arithmetic (BENCHMARKS.md). Which one is only looked for on failure."""
    if bool(torch.isfinite(torch.cat([t.reshape(-1).float() for _, t in named])).all()):
        return None
    return next(name for name, t in named if not bool(torch.isfinite(t).all()))
