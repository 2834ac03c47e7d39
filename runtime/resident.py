"""An adapter as it sits on the serving device: per-block bottleneck weights and the head."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters.bottleneck import LAYER_NORM_EPS, bottleneck_branch
from ..adapters.config import AdapterConfig


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
class LoRAWeights:
    """A LoRA update of one block's fused qkv projection: scaling * B(A(x))."""

    lora_a: Tensor  # (r, D)
    lora_b: Tensor  # (3D, r)
    scaling: float

    def __call__(self, x: Tensor) -> Tensor:
        return self.scaling * (x @ self.lora_a.t() @ self.lora_b.t())


@dataclass(frozen=True)
class ResidentAdapter:
    task_id: str
    version: int
    blocks: dict[int, BlockWeights]  # bottleneck adapters (MoSA, standard) by block
    head_weight: Tensor  # (C, D)
    head_bias: Tensor  # (C,)
    qkv: dict[int, LoRAWeights] = field(default_factory=dict)  # LoRA updates by block

    @property
    def num_bytes(self) -> int:
        tensors = [self.head_weight, self.head_bias] + [
            t for b in self.blocks.values() for t in (b.norm_weight, b.norm_bias, b.down_weight, b.down_bias, b.up_weight, b.up_bias)
        ] + [t for q in self.qkv.values() for t in (q.lora_a, q.lora_b)]
        return sum(t.numel() * t.element_size() for t in tensors)


def make_resident(task_id: str, version: int, tensors: dict[str, Tensor], config: AdapterConfig, depth: int,
                  device: torch.device, dtype: torch.dtype) -> ResidentAdapter:
    """Moves a file's tensors to the device, grouped per block by kind (bottleneck or LoRA)."""
    moved = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
    blocks = config.resolve_blocks(depth)
    bottlenecks, lora = {}, {}
    if config.kind == "bottleneck":
        names = ("norm.weight", "norm.bias", "down.weight", "down.bias", "up.weight", "up.bias")
        bottlenecks = {b: BlockWeights(*(moved[f"blocks.{b}.{n}"] for n in names), scale=config.scale) for b in blocks}
    elif config.kind == "lora":
        lora = {b: LoRAWeights(moved[f"blocks.{b}.qkv.lora_a"], moved[f"blocks.{b}.qkv.lora_b"],
                               config.lora_alpha / config.r) for b in blocks}
    return ResidentAdapter(task_id, version, bottlenecks, moved["head.weight"], moved["head.bias"], lora)
