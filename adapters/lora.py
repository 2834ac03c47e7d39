"""LoRA on a frozen linear layer (the ViT blocks' fused qkv projection), a baseline to MoSA."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoRADelta(nn.Module):
    """The low-rank update (alpha / r) * B(A(x)) added to a frozen linear layer's output.

    A is Kaiming-uniform and B zero, so training starts from the frozen layer exactly. Kept apart
    from the base layer (it is added by a `Tap`) so the backbone's weights stay untouched.
    """

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float) -> None:
        super().__init__()
        self.scaling = alpha / r
        self.lora_a = nn.Parameter(torch.empty(r, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.scaling * (x @ self.lora_a.t() @ self.lora_b.t())
