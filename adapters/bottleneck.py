"""The AdaptFormer-style parallel bottleneck adapter: s * Up(Dropout(GELU(Down(LN_a(h)))))."""

from __future__ import annotations

import math

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


class BottleneckAdapter(nn.Module):
    """A dense bottleneck adapter; also the merged, deployable form of MoSA."""

    def __init__(self, dim: int, r: int, scale: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        self.scale = scale
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.down = nn.Linear(dim, r)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(r, dim)
        init_down_projection(self.down)
        init_up_projection(self.up)

    def forward(self, h: Tensor) -> Tensor:
        return self.scale * self.up(self.dropout(self.act(self.down(self.norm(h)))))
