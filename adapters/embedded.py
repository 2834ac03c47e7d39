"""The embedded default backbone: a small ViT pretrained by the project itself, shipped in the package.

Made by `mosaserve pretrain-backbone` (adapters/pretraining.py) on Animal-MNIST silhouettes;
the downstream demo tasks (MNIST, scikit-learn digits) are not in its pretraining data. Any other
timm ViT with a local checkpoint is used the same way, through `BackboneSpec(checkpoint=...)`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .backbone import BackboneSpec

EMBEDDED_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "default_backbone.safetensors"
EMBEDDED_BACKBONE = BackboneSpec(
    "vit_tiny_patch16_224", {"img_size": 28, "patch_size": 4, "depth": 6, "global_pool": "avg"},
    str(EMBEDDED_CHECKPOINT),
)
EMBEDDED_ARCHITECTURE = replace(EMBEDDED_BACKBONE, checkpoint=None)  # random init: what pretraining starts from
