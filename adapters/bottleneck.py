"""The AdaptFormer-style parallel bottleneck adapter: s * Up(Dropout(GELU(Down(LN_a(h)))))."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

# timm's ViTs use this LayerNorm epsilon, and so does the official MoSA adapter.
LAYER_NORM_EPS = 1e-6


def init_down_projection(layer: nn.Linear) -> None:
    """Down: Kaiming-uniform weight (a = sqrt(5)), zero bias."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
    nn.init.zeros_(layer.bias)


def init_up_projection(layer: nn.Linear) -> None:
    """Up: all zero, so training starts from the frozen model exactly."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


def bottleneck_branch(normed: Tensor, down_weight: Tensor, down_bias: Tensor, up_weight: Tensor, up_bias: Tensor,
                      scale: float, dropout: nn.Module | None = None) -> Tensor:
    """s * Up(Dropout(GELU(Down(normed)))): the one formula training and serving both run."""
    z = F.gelu(F.linear(normed, down_weight, down_bias))
    return scale * F.linear(z if dropout is None else dropout(z), up_weight, up_bias)


class BottleneckAdapter(nn.Module):
    """A dense bottleneck adapter; also the merged, deployable form of MoSA."""

    def __init__(self, dim: int, r: int, scale: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        self.scale = scale
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.down = nn.Linear(dim, r)
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(r, dim)
        init_down_projection(self.down)
        init_up_projection(self.up)

    def forward(self, h: Tensor) -> Tensor:
        return bottleneck_branch(self.norm(h), self.down.weight, self.down.bias, self.up.weight, self.up.bias,
                                 self.scale, self.dropout)
