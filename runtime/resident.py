"""An adapter as it sits on the serving device: its bottleneck adapters folded for mixed batches, and its head."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters.config import AdapterConfig


@dataclass(frozen=True)
class FoldedBottlenecks:
    """A task's bottleneck adapters in every block, rewritten so a batch shares the expensive part.

    The adapter s * Up(GELU(Down(LN_a(h)))) equals [GELU(n(h) @ down + down_bias), 1] @ up, with n the
    LayerNorm without its affine: the affine is folded into Down, the scale into Up, and Up's bias is
    Up's last row (multiplied by a column of ones). So every row of a batch shares one normalisation
    and the adapter's output lands in the block's output in a single in-place matmul. Blocks without
    an adapter hold zeros, which add exactly zero (GELU(0) = 0).
    """

    down: Tensor  # (L, D, r)
    down_bias: Tensor  # (L, 1, r)
    up: Tensor  # (L, r + 1, D)
    blocks: frozenset[int]

    @property
    def r(self) -> int:
        return self.down.shape[-1]

    def widened(self, r: int) -> "FoldedBottlenecks":
        """The same adapters at width r >= self.r: the extra units are zeros and add exactly zero."""
        extra = r - self.r
        if extra == 0:
            return self
        up = torch.cat([F.pad(self.up[:, :-1], (0, 0, 0, extra)), self.up[:, -1:]], dim=1)
        return FoldedBottlenecks(F.pad(self.down, (0, extra)), F.pad(self.down_bias, (0, extra)), up, self.blocks)


def fold_bottlenecks(tensors: dict[str, Tensor], blocks: tuple[int, ...], depth: int, scale: float) -> FoldedBottlenecks:
    down_weight = tensors[f"blocks.{blocks[0]}.down.weight"]
    r, dim = down_weight.shape
    down = down_weight.new_zeros(depth, dim, r)
    down_bias = down_weight.new_zeros(depth, 1, r)
    up = down_weight.new_zeros(depth, r + 1, dim)
    for b in blocks:
        w, norm_w, norm_b = (tensors[f"blocks.{b}.{n}"] for n in ("down.weight", "norm.weight", "norm.bias"))
        down[b] = (w * norm_w).t()
        down_bias[b, 0] = tensors[f"blocks.{b}.down.bias"] + w @ norm_b
        up[b, :r] = scale * tensors[f"blocks.{b}.up.weight"].t()
        up[b, r] = scale * tensors[f"blocks.{b}.up.bias"]
    return FoldedBottlenecks(down, down_bias, up, frozenset(blocks))


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
    bottlenecks: FoldedBottlenecks | None  # MoSA and standard adapters; None for LoRA and head-only tasks
    head_weight: Tensor  # (C, D)
    head_bias: Tensor  # (C,)
    qkv: dict[int, LoRAWeights] = field(default_factory=dict)  # LoRA updates by block

    @property
    def num_bytes(self) -> int:
        tensors = [self.head_weight, self.head_bias] + [t for q in self.qkv.values() for t in (q.lora_a, q.lora_b)]
        if self.bottlenecks is not None:
            tensors += [self.bottlenecks.down, self.bottlenecks.down_bias, self.bottlenecks.up]
        return sum(t.numel() * t.element_size() for t in tensors)


def make_resident(task_id: str, version: int, tensors: dict[str, Tensor], config: AdapterConfig, depth: int,
                  device: torch.device, dtype: torch.dtype) -> ResidentAdapter:
    """Moves a file's tensors to the device in their serving form (bottlenecks folded, LoRA per block)."""
    blocks = config.resolve_blocks(depth)
    bottlenecks, lora = None, {}
    if config.kind == "bottleneck" and blocks:
        # Folded in float64, so the rewrite adds no rounding of its own before the cast.
        exact = {name: t.to(torch.float64) for name, t in tensors.items() if name.startswith("blocks.")}
        folded = fold_bottlenecks(exact, blocks, depth, config.scale)
        bottlenecks = FoldedBottlenecks(*(t.to(device=device, dtype=dtype) for t in
                                          (folded.down, folded.down_bias, folded.up)), folded.blocks)
    elif config.kind == "lora":
        moved = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
        lora = {b: LoRAWeights(moved[f"blocks.{b}.qkv.lora_a"], moved[f"blocks.{b}.qkv.lora_b"],
                               config.lora_alpha / config.r) for b in blocks}
    head = [tensors[f"head.{n}"].to(device=device, dtype=dtype) for n in ("weight", "bias")]
    return ResidentAdapter(task_id, version, bottlenecks, *head, lora)
