"""Where and in what precision the runtime computes: checked when a configuration is made, not at first batch."""

from __future__ import annotations

import torch

SERVING_DTYPES = ("float32", "bfloat16", "float16")  # bfloat16 is the GPU serving precision


def parse_device(name: str) -> torch.device:
    """A torch device name ('cpu', 'cuda', 'cuda:1'); not checked for presence, since a config may be
    written on a machine without the GPU its replicas will have."""
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {name!r}: {exc}") from exc


def local_device(name: str) -> torch.device:
    """A device of this machine, for runs that start here (benchmarks, the local comparison)."""
    device = parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: torch sees no CUDA device on this machine")
    return device


def serving_dtype(name: str) -> torch.dtype:
    if name not in SERVING_DTYPES:
        raise ValueError(f"dtype must be one of {SERVING_DTYPES}, got {name!r}")
    return getattr(torch, name)
