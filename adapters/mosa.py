"""MoSA: a bottleneck adapter split into K disjoint sparse experts, trained stochastically, merged.

`share` chooses what is split: "down" keeps Down dense and shared and splits Up (the official
default), "up" keeps Up dense and splits Down, "none" splits both. Biases and the adapter's
LayerNorm are never split: here one dense bias is shared by all experts (the official code keeps a
dense bias per expert copy), so MoSA's trainable parameters and optimizer state equal the standard
adapter's exactly.

While training, each forward pass draws one expert for Down and one for Up, independently and
uniformly. In eval mode, and after `merge()`, the adapter uses the mean of the experts' weights.
For a split Up (share="down") that is the exact expected output over the draw, because the output
is linear in Up. Where Down is split (share="up" or "none") the GELU sits between the draw and
the output, so the merged adapter is the mean of the experts' weights, as in the paper, and not
the mean of their outputs.
"""

from __future__ import annotations

import random

import torch
from torch import Tensor, nn

from .bottleneck import LAYER_NORM_EPS, BottleneckAdapter, bottleneck_branch
from .experts import DenseWeight, ExpertSplit

SHARE_MODES = ("down", "up", "none")


def _weight_holder(init_weight: Tensor, split: bool, num_experts: int, generator: torch.Generator) -> nn.Module:
    return ExpertSplit(init_weight, num_experts, generator) if split else DenseWeight(init_weight)


class MoSAAdapter(nn.Module):
    """A bottleneck adapter whose split projection(s) hold K experts in one tensor each."""

    def __init__(
        self,
        dim: int,
        r: int,
        scale: float = 0.1,
        dropout: float = 0.1,
        num_experts: int = 4,
        share: str = "down",
        mask_generator: torch.Generator | None = None,
        draw_rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        if share not in SHARE_MODES:
            raise ValueError(f"share must be one of {SHARE_MODES}, got {share!r}")
        generator = mask_generator if mask_generator is not None else torch.Generator().manual_seed(0)
        dense = BottleneckAdapter(dim, r, scale, dropout)  # the standard adapter's initial values
        self.scale = scale
        self.share = share
        self.num_experts = num_experts
        self.draw_rng = draw_rng if draw_rng is not None else random.Random(0)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.down = _weight_holder(dense.down.weight, share in ("up", "none"), num_experts, generator)
        self.up = _weight_holder(dense.up.weight, share in ("down", "none"), num_experts, generator)
        self.down_bias = nn.Parameter(dense.down.bias.detach().clone())
        self.up_bias = nn.Parameter(dense.up.bias.detach().clone())
        self.dropout = nn.Dropout(dropout)

    def draw_experts(self) -> tuple[int, int]:
        """One random expert for Down and one for Up, drawn independently."""
        return self.draw_rng.randrange(self.down.num_experts), self.draw_rng.randrange(self.up.num_experts)

    def forward(self, h: Tensor) -> Tensor:
        if self.training:
            down_expert, up_expert = self.draw_experts()
            return self.expert_forward(h, down_expert, up_expert)
        return self._project(h, self.down.merged(), self.up.merged())

    def expert_forward(self, h: Tensor, down_expert: int, up_expert: int) -> Tensor:
        """The adapter with one given expert for each split projection."""
        return self._project(h, self.down.expert(down_expert), self.up.expert(up_expert))

    def _project(self, h: Tensor, down_weight: Tensor, up_weight: Tensor) -> Tensor:
        return bottleneck_branch(self.norm(h), down_weight, self.down_bias, up_weight, self.up_bias, self.scale,
                                 self.dropout)

    def split_weights(self) -> list[ExpertSplit]:
        return [holder for holder in (self.down, self.up) if isinstance(holder, ExpertSplit)]

    @torch.no_grad()
    def merge(self) -> BottleneckAdapter:
        """The deployable dense adapter: mean of the experts, same size as a standard adapter."""
        dim, r = self.down.weight.shape[1], self.down.weight.shape[0]
        merged = BottleneckAdapter(dim, r, self.scale, self.dropout.p).to(self.down_bias)
        merged.norm.load_state_dict(self.norm.state_dict())
        merged.down.weight.copy_(self.down.merged())
        merged.down.bias.copy_(self.down_bias)
        merged.up.weight.copy_(self.up.merged())
        merged.up.bias.copy_(self.up_bias)
        return merged.train(self.training)
