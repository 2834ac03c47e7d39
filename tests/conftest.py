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


@pytest.fixture(scope="session")
def s3_env():
    """A real S3-compatible server on loopback (moto's), and this process's AWS environment pointing at it."""
    from mosaserve.loadtests.local_s3 import environment, local_s3_server

    with local_s3_server() as env, environment(env):
        yield env


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A fresh bucket on the test server: its s3:// URL."""
    from mosaserve.loadtests.local_s3 import new_bucket

    return new_bucket()
