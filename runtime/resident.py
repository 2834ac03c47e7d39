"""An adapter as it sits on the serving device: its bottleneck adapters folded for mixed batches, and its head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters.config import AdapterConfig, AdapterKind, Head


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


def fold_norm_into(weight: Tensor, bias: Tensor, norm_weight: Tensor, norm_bias: Tensor) -> tuple[Tensor, Tensor]:
    """A LayerNorm's affine folded into the linear map after it: Linear(LN(x)) = n(x) @ W' + b', n without affine."""
    return (weight * norm_weight).t(), bias + weight @ norm_bias


def fold_bottlenecks(tensors: dict[str, Tensor], blocks: tuple[int, ...], depth: int, scale: float) -> FoldedBottlenecks:
    down_weight = tensors[f"blocks.{blocks[0]}.down.weight"]
    r, dim = down_weight.shape
    down = down_weight.new_zeros(depth, dim, r)
    down_bias = down_weight.new_zeros(depth, 1, r)
    up = down_weight.new_zeros(depth, r + 1, dim)
    for b in blocks:
        down[b], down_bias[b, 0] = fold_norm_into(*(tensors[f"blocks.{b}.{n}"] for n in
                                                    ("down.weight", "down.bias", "norm.weight", "norm.bias")))
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
class PooledHeadWeights:
    """A format 1 head: a linear map of the backbone's pooled features."""

    weight: Tensor  # (C, D)
    bias: Tensor  # (C,)
    reads = Head.POOLED

    def __call__(self, pooled: Tensor) -> Tensor:
        return F.linear(pooled, self.weight, self.bias)

    def tensors(self) -> list[Tensor]:
        return [self.weight, self.bias]


@dataclass(frozen=True)
class TokenMapWeights:
    """A token-map head with its LayerNorm affine folded into `down`, so a batch normalises its tokens once."""

    down: Tensor  # (D, k), or (2D, k) reading the middle block's tokens too
    down_bias: Tensor  # (k,)
    out_weight: Tensor  # (C, N * k)
    out_bias: Tensor  # (C,)
    reads: Head = Head.TOKENS

    def __call__(self, normed_patches: Tensor) -> Tensor:
        return F.linear(torch.addmm(self.down_bias, normed_patches.flatten(0, 1), self.down)
                        .view(len(normed_patches), -1), self.out_weight, self.out_bias)

    def tensors(self) -> list[Tensor]:
        return [self.down, self.down_bias, self.out_weight, self.out_bias]


def resident_head(tensors: dict[str, Tensor], config: AdapterConfig, device: torch.device,
                  dtype: torch.dtype) -> PooledHeadWeights | TokenMapWeights:
    if config.head is Head.POOLED:
        return PooledHeadWeights(*(tensors[f"head.{n}"].to(device=device, dtype=dtype) for n in ("weight", "bias")))
    # Folded in float64, as the bottlenecks are; two norms side by side fold as one of twice the width.
    exact = {name: t.to(torch.float64) for name, t in tensors.items() if name.startswith("head.")}
    norms = ["head.norm"] + (["head.norm_mid"] if config.head is Head.TOKENS_MID else [])
    down = fold_norm_into(exact["head.down.weight"], exact["head.down.bias"],
                          torch.cat([exact[f"{n}.weight"] for n in norms]), torch.cat([exact[f"{n}.bias"] for n in norms]))
    folded = (*down, tensors["head.out.weight"], tensors["head.out.bias"])
    return TokenMapWeights(*(t.to(device=device, dtype=dtype).contiguous() for t in folded), reads=config.head)


@dataclass(frozen=True)
class ResidentAdapter:
    task_id: str
    version: int
    bottlenecks: FoldedBottlenecks | None  # MoSA and standard adapters; None for LoRA and head-only tasks
    head: PooledHeadWeights | TokenMapWeights
    qkv: dict[int, LoRAWeights] = field(default_factory=dict)  # LoRA updates by block

    @property
    def num_bytes(self) -> int:
        tensors = self.head.tensors() + [t for q in self.qkv.values() for t in (q.lora_a, q.lora_b)]
        if self.bottlenecks is not None:
            tensors += [self.bottlenecks.down, self.bottlenecks.down_bias, self.bottlenecks.up]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class BlockWeights:
    """What a kind adds inside the backbone's blocks, in the form the executor runs."""

    bottlenecks: FoldedBottlenecks | None = None
    qkv: dict[int, LoRAWeights] = field(default_factory=dict)


BlockWeightsBuilder = Callable[
    [dict[str, Tensor], AdapterConfig, tuple[int, ...], int, torch.device, torch.dtype], BlockWeights
]


def resident_bottlenecks(tensors: dict[str, Tensor], config: AdapterConfig, blocks: tuple[int, ...], depth: int,
                         device: torch.device, dtype: torch.dtype) -> BlockWeights:
    if not blocks:
        return BlockWeights()
    # Folded in float64, so the rewrite adds no rounding of its own before the cast.
    exact = {name: t.to(torch.float64) for name, t in tensors.items() if name.startswith("blocks.")}
    folded = fold_bottlenecks(exact, blocks, depth, config.scale)
    return BlockWeights(bottlenecks=FoldedBottlenecks(*(t.to(device=device, dtype=dtype) for t in
                                                        (folded.down, folded.down_bias, folded.up)), folded.blocks))


def resident_lora(tensors: dict[str, Tensor], config: AdapterConfig, blocks: tuple[int, ...], depth: int,
                  device: torch.device, dtype: torch.dtype) -> BlockWeights:
    moved = {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}
    return BlockWeights(qkv={b: LoRAWeights(moved[f"blocks.{b}.qkv.lora_a"], moved[f"blocks.{b}.qkv.lora_b"],
                                            config.lora_alpha / config.r) for b in blocks})


def resident_head_only(tensors: dict[str, Tensor], config: AdapterConfig, blocks: tuple[int, ...], depth: int,
                       device: torch.device, dtype: torch.dtype) -> BlockWeights:
    return BlockWeights()


# The one place a kind gets its serving form: a kind missing here is refused at registration.
SERVING_FORMS: dict[AdapterKind, BlockWeightsBuilder] = {
    AdapterKind.BOTTLENECK: resident_bottlenecks,
    AdapterKind.LORA: resident_lora,
    AdapterKind.HEAD_ONLY: resident_head_only,
}


def make_resident(task_id: str, version: int, tensors: dict[str, Tensor], config: AdapterConfig, depth: int,
                  device: torch.device, dtype: torch.dtype) -> ResidentAdapter:
    """Moves a file's tensors to the device in their serving form (bottlenecks folded, LoRA per block)."""
    build = SERVING_FORMS[config.kind]
    weights = build(tensors, config, config.resolve_blocks(depth), depth, device, dtype)
    return ResidentAdapter(task_id, version, weights.bottlenecks, resident_head(tensors, config, device, dtype),
                           weights.qkv)
