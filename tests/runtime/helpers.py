"""Random 'trained' adapter files for the tiny test backbone."""

from __future__ import annotations

import torch

from mosaserve.adapters.config import AdapterConfig
from mosaserve.adapters.file_format import AdapterFile, AdapterHeader, encode_adapter, load_adapter
from mosaserve.adapters.model import AdaptedViT


def random_model(backbone, seed: int, method: str = "mosa", r: int = 4, classes: int = 3,
                 target_blocks=None, head: str = "tokens") -> AdaptedViT:
    torch.manual_seed(seed)
    config = AdapterConfig(method=method, r=r, target_blocks=target_blocks, head=head, head_rank=3)
    model = AdaptedViT(backbone, config, classes).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    model.merge_()
    return model


def adapter_bytes(model: AdaptedViT, info) -> bytes:
    labels = tuple(f"class{i}" for i in range(model.num_classes))
    return encode_adapter(AdapterHeader(model.config, info, labels), model.export_tensors())


def adapter_file(model: AdaptedViT, info) -> AdapterFile:
    return load_adapter(adapter_bytes(model, info), info.fingerprint)


# Source for a child process that is to lose power: `step(f)` wraps a callable so that entering the
# `crash_at`-th call of any wrapped one ends the process at once (os._exit: no cleanup, no finally blocks).
POWER_CUT = """
import os
steps = 0
def step(real):
    def wrapped(*args, **kwargs):
        global steps
        steps += 1
        if steps == crash_at:
            os._exit(137)
        return real(*args, **kwargs)
    return wrapped
"""
