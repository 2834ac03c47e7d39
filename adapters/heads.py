"""A task's classification head: what it reads of the frozen backbone's final tokens.

- `TokenMapHead` ("tokens", the default): LayerNorm, then one low-rank projection shared by every
  patch token (D -> k), then a linear map of all tokens' k features together, in their grid order.
  It keeps where things are, which a mean over tokens throws away, and stays small
  (2D + (D + 1)k + (Nk + 1)C parameters for N patch tokens and C classes).
- `PooledHead` ("pooled"): a linear map of the backbone's own pooled features (format 1 files).
Every head is called on the output of `forward_features` (all tokens) and takes what it reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from .bottleneck import LAYER_NORM_EPS
from .config import AdapterConfig, Head

if TYPE_CHECKING:  # a type only: timm loads where a model is built
    from timm.models.vision_transformer import VisionTransformer


class PooledHead(nn.Linear):
    """The backbone's pooled features (its forward_head before the classifier), then a linear map."""

    def __init__(self, backbone: VisionTransformer, num_classes: int) -> None:
        super().__init__(backbone.num_features, num_classes)
        self._pool = [backbone.forward_head]  # in a list: the backbone is not a submodule of the head
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        return super().forward(self._pool[0](tokens, pre_logits=True))


class TokenMapHead(nn.Module):
    """norm -> down (D -> k) per patch token -> flatten in grid order -> out (N*k -> C)."""

    def __init__(self, dim: int, num_prefix_tokens: int, num_patches: int, rank: int, num_classes: int) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.down = nn.Linear(dim, rank)
        self.out = nn.Linear(num_patches * rank, num_classes)
        nn.init.trunc_normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        patches = tokens[:, self.num_prefix_tokens :]
        return self.out(self.down(self.norm(patches)).flatten(1))


def build_head(backbone: VisionTransformer, config: AdapterConfig, num_classes: int) -> nn.Module:
    if config.head is Head.POOLED:
        return PooledHead(backbone, num_classes)
    return TokenMapHead(backbone.num_features, backbone.num_prefix_tokens, backbone.patch_embed.num_patches,
                        config.head_rank, num_classes)


def head_shapes(config: AdapterConfig, dim: int, num_patches: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """The head's tensors as named in an adapter file, with their shapes."""
    if config.head is Head.POOLED:
        return {"head.weight": (num_classes, dim), "head.bias": (num_classes,)}
    k = config.head_rank
    return {"head.norm.weight": (dim,), "head.norm.bias": (dim,), "head.down.weight": (k, dim), "head.down.bias": (k,),
            "head.out.weight": (num_classes, num_patches * k), "head.out.bias": (num_classes,)}
