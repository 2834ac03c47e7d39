"""From an adapter file to a runnable model on a given backbone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backbone import BackboneInfo
from .errors import BackboneMismatchError
from .file_format import AdapterFile
from .model import AdaptedViT

if TYPE_CHECKING:  # a type only: timm loads where a model is built
    from timm.models.vision_transformer import VisionTransformer


def build_adapted_model(backbone: VisionTransformer, info: BackboneInfo, adapter: AdapterFile) -> AdaptedViT:
    """The backbone with the file's merged adapter and head attached (eval mode)."""
    if adapter.header.backbone.fingerprint != info.fingerprint:
        raise BackboneMismatchError("adapter file was trained on a different backbone (weights fingerprint differs)")
    model = AdaptedViT(backbone, adapter.header.adapter, adapter.header.num_classes, merged=True)
    model.load_tensors(adapter.tensors)
    return model.eval()
