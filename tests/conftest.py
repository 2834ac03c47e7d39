"""Shared fixtures: tiny random-weight timm ViTs so the suite stays fast on 2 cores."""

from __future__ import annotations

import pytest
import torch

from mosaserve.adapters.backbone import BackboneSpec, load_backbone

TINY_VIT = BackboneSpec(
    "vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "depth": 3, "embed_dim": 32, "num_heads": 2}
)


@pytest.fixture
def tiny_spec() -> BackboneSpec:
    return TINY_VIT


@pytest.fixture
def tiny_backbone():
    """A fresh tiny ViT (seeded random weights) and its BackboneInfo."""
    torch.manual_seed(0)
    return load_backbone(TINY_VIT)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
