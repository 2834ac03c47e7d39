"""A task's classification head: what it reads of the frozen backbone's final tokens.

- `TokenMapHead` ("tokens", the default): LayerNorm, then one low-rank projection shared by every
  patch token (D -> k), then a linear map of all tokens' k features together, in their grid order.
  It keeps where things are, which a mean over tokens throws away, and stays small
  (2D + (D + 1)k + (Nk + 1)C parameters for N patch tokens and C classes).
- `TokenMapHead` reading two depths ("tokens_mid"): the same, over each patch's final token and its
  token after the middle block side by side (each with its own LayerNorm): middle blocks keep more of
  the pixels' texture, which some tasks need (RESULTS.md).
- `PooledHead` ("pooled"): a linear map of the backbone's own pooled features (format 1 files).
Every head is called on the output of `forward_features` (all tokens) and takes what it reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .bottleneck import LAYER_NORM_EPS
from .config import AdapterConfig, Head
from .taps import OutputCapture

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


def middle_block(depth: int) -> int:
    """The block whose output a "tokens_mid" head reads beside the final tokens."""
    return max(depth // 2 - 1, 0)


class TokenMapHead(nn.Module):
    """norm -> down (D -> k) per patch token -> flatten in grid order -> out (N*k -> C).

    Given `middle`, each patch's token after that block joins its final token (norm_mid), down is 2D -> k."""

    def __init__(self, dim: int, num_prefix_tokens: int, num_patches: int, rank: int, num_classes: int,
                 middle: nn.Module | None = None) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm_mid = None if middle is None else nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.down = nn.Linear(dim if middle is None else 2 * dim, rank)
        self.out = nn.Linear(num_patches * rank, num_classes)
        nn.init.trunc_normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)
        # In a list: the block belongs to the backbone, not to the head's parameters.
        self._middle = [] if middle is None else [OutputCapture(middle)]

    def forward(self, tokens: Tensor) -> Tensor:
        patches = self.norm(tokens[:, self.num_prefix_tokens :])
        if self.norm_mid is not None:
            middle = self._middle[0].take()[:, self.num_prefix_tokens :]
            patches = torch.cat([patches, self.norm_mid(middle)], dim=-1)
        return self.out(self.down(patches).flatten(1))

    def detach(self) -> None:
        for capture in self._middle:
            capture.remove()
        self._middle = []


def build_head(backbone: VisionTransformer, config: AdapterConfig, num_classes: int) -> nn.Module:
    """Built after the adapters' taps, so a middle block's output is read with its adapter applied."""
    if config.head is Head.POOLED:
        return PooledHead(backbone, num_classes)
    middle = backbone.blocks[middle_block(len(backbone.blocks))] if config.head is Head.TOKENS_MID else None
    return TokenMapHead(backbone.num_features, backbone.num_prefix_tokens, backbone.patch_embed.num_patches,
                        config.head_rank, num_classes, middle)


def head_shapes(config: AdapterConfig, dim: int, num_patches: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    """The head's tensors as named in an adapter file, with their shapes."""
    if config.head is Head.POOLED:
        return {"head.weight": (num_classes, dim), "head.bias": (num_classes,)}
    k = config.head_rank
    reads = {"head.norm.weight": (dim,), "head.norm.bias": (dim,)}
    if config.head is Head.TOKENS_MID:
        reads |= {"head.norm_mid.weight": (dim,), "head.norm_mid.bias": (dim,)}
    return {**reads, "head.down.weight": (k, len(reads) // 2 * dim), "head.down.bias": (k,),
            "head.out.weight": (num_classes, num_patches * k), "head.out.bias": (num_classes,)}
