"""An adapter as it sits on the serving device: per-block bottleneck weights and the head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters.bottleneck import LAYER_NORM_EPS, bottleneck_branch


@dataclass(frozen=True)
class BlockWeights:
    norm_weight: Tensor  # (D,)
    norm_bias: Tensor  # (D,)
    down_weight: Tensor  # (r, D)
    down_bias: Tensor  # (r,)
    up_weight: Tensor  # (D, r)
    up_bias: Tensor  # (D,)
    scale: float

    def __call__(self, h: Tensor) -> Tensor:
        """The merged bottleneck adapter in eval mode: s * Up(GELU(Down(LN_a(h))))."""
        normed = F.layer_norm(h, h.shape[-1:], self.norm_weight, self.norm_bias, LAYER_NORM_EPS)
        return bottleneck_branch(normed, self.down_weight, self.down_bias, self.up_weight, self.up_bias, self.scale)


@dataclass(frozen=True)
class ResidentAdapter:
    task_id: str
    version: int
    blocks: dict[int, BlockWeights]
    head_weight: Tensor  # (C, D)
    head_bias: Tensor  # (C,)

    @property
    def num_bytes(self) -> int:
        tensors = [self.head_weight, self.head_bias] + [
            t for b in self.blocks.values() for t in (b.norm_weight, b.norm_bias, b.down_weight, b.down_bias, b.up_weight, b.up_bias)
        ]
        return sum(t.numel() * t.element_size() for t in tensors)


def make_resident(task_id: str, version: int, tensors: dict[str, Tensor], blocks: tuple[int, ...], scale: float,
                  device: torch.device, dtype: torch.dtype) -> ResidentAdapter:
    """Moves a file's tensors to the device, grouped per block."""
    moved = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
    per_block = {
        b: BlockWeights(*(moved[f"blocks.{b}.{n}"] for n in ("norm.weight", "norm.bias", "down.weight", "down.bias",
                                                             "up.weight", "up.bias")), scale=scale)
        for b in blocks
    }
    return ResidentAdapter(task_id, version, per_block, moved["head.weight"], moved["head.bias"])
