"""Adds a learned delta to a timm module's output without forking timm's model code.

A `DeltaTap` reads the input of one module (`read_at`) and adds `delta(input)` to the output of
another (`add_at`), through forward hooks. Two placements cover the methods here:
- parallel adapter: read at `block.norm2` (its input is h, the residual stream after attention),
  add at `block`, giving h + MLP(LN2(h)) + delta(h) whatever LayerScale or DropPath the block has;
- LoRA: read and add at `block.attn.qkv`, giving qkv(x) + delta(x).
The captured input is held between the two hooks of one forward pass, so one model instance must
not run forward passes from two threads at once (the serving executor runs batches one by one).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch import Tensor, nn
from timm.models.vision_transformer import Block


class DeltaTap:
    def __init__(self, read_at: nn.Module, add_at: nn.Module, delta: Callable[[Tensor], Optional[Tensor]]) -> None:
        self.delta = delta
        self._captured: Tensor | None = None
        self._handles = [
            read_at.register_forward_pre_hook(self._capture),
            add_at.register_forward_hook(self._add),
        ]

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._captured = args[0]

    def _add(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        captured, self._captured = self._captured, None
        delta = self.delta(captured)
        return output if delta is None else output + delta  # None: nothing to add in this block

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def parallel_mlp_tap(block: Block, delta: Callable[[Tensor], Tensor]) -> DeltaTap:
    """An adapter in parallel to the block's MLP branch: block(x) + delta(h)."""
    return DeltaTap(block.norm2, block, delta)


def qkv_tap(block: Block, delta: Callable[[Tensor], Tensor]) -> DeltaTap:
    """A low-rank update on the block's fused qkv projection: qkv(x) + delta(x)."""
    return DeltaTap(block.attn.qkv, block.attn.qkv, delta)
