"""Changes a timm module's output from another module's input, without forking timm's model code.

A `Tap` reads the input of one module (`read_at`) and replaces the output of another (`write_at`)
by `update(input, output)`, through forward hooks. Two placements cover the methods here:
- parallel adapter: read at `block.norm2` (its input is h, the residual stream after attention),
  write at `block`, giving h + MLP(LN2(h)) + delta(h) whatever LayerScale or DropPath the block has;
- LoRA: read and write at `block.attn.qkv`, giving qkv(x) + delta(x).
Training adds a delta out of place (`adding`), so autograd sees it; serving may add in place.
The captured input is held between the two hooks of one forward pass, so one model instance must
not run forward passes from two threads at once (the serving executor runs batches one by one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from torch import Tensor, nn

if TYPE_CHECKING:  # a type only: timm loads where a model is built
    from timm.models.vision_transformer import Block

Update = Callable[[Tensor, Tensor], Tensor]  # (captured input, output) -> the output to use


class Tap:
    def __init__(self, read_at: nn.Module, write_at: nn.Module, update: Update) -> None:
        self.update = update
        self._captured: Tensor | None = None
        self._handles = [
            read_at.register_forward_pre_hook(self._capture),
            write_at.register_forward_hook(self._write),
        ]

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._captured = args[0]

    def _write(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        captured, self._captured = self._captured, None
        return self.update(captured, output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def adding(delta: Callable[[Tensor], Optional[Tensor]]) -> Update:
    """output + delta(input), out of place; a delta of None leaves the output as it is."""

    def update(captured: Tensor, output: Tensor) -> Tensor:
        change = delta(captured)
        return output if change is None else output + change

    return update


def parallel_mlp_tap(block: Block, update: Update) -> Tap:
    """An adapter in parallel to the block's MLP branch: update(h, block(x))."""
    return Tap(block.norm2, block, update)


class OutputCapture:
    """Holds a module's latest output (a reference, no copy) until `take` reads it."""

    def __init__(self, module: nn.Module) -> None:
        self._output: Tensor | None = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        self._output = output

    def take(self) -> Tensor:
        output, self._output = self._output, None
        if output is None:
            raise RuntimeError("the captured module did not run in this forward pass")
        return output

    def remove(self) -> None:
        self._handle.remove()


def qkv_tap(block: Block, update: Update) -> Tap:
    """A low-rank update on the block's fused qkv projection: update(x, qkv(x))."""
    return Tap(block.attn.qkv, block.attn.qkv, update)
