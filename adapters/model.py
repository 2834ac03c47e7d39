"""A frozen timm ViT with one task's adapter and classification head: the trainable unit.

Tensors exported for the adapter file are the merged, deployable ones, named
`blocks.{i}.{norm,down,up}.{weight,bias}` (bottleneck), `blocks.{i}.qkv.lora_{a,b}` (LoRA) and
`head.*` (adapters/heads.py).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from .backbone import freeze
from .bottleneck import BottleneckAdapter
from .config import AdapterConfig, AdapterKind, Method
from .experts import ExpertSplit
from .heads import TokenMapHead, build_head
from .lora import LoRADelta
from .mosa import MoSAAdapter
from .taps import Tap, adding, parallel_mlp_tap, qkv_tap

if TYPE_CHECKING:  # a type only: timm loads where a model is built
    from timm.models.vision_transformer import VisionTransformer


def _mask_generator(mask_seed: int, block: int) -> torch.Generator:
    # One stream per block, so a block's masks do not depend on which other blocks are adapted.
    return torch.Generator().manual_seed(mask_seed * 100_003 + block)


class AdaptedViT(nn.Module):
    """backbone (frozen) + per-block adapters + head. `merged=True` builds MoSA as its merged form."""

    def __init__(
        self,
        backbone: VisionTransformer,
        config: AdapterConfig,
        num_classes: int,
        seed: int = 0,
        merged: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.backbone = freeze(backbone)
        self.config = config
        self.blocks = config.resolve_blocks(len(backbone.blocks))
        self.adapters = nn.ModuleDict()
        self._taps: list[Tap] = []
        draw_rng = random.Random(seed)
        # Initial weights are a function of `seed` alone, whatever the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for index in self.blocks:
                self.adapters[str(index)] = self._build_adapter(index, merged, draw_rng)
                self._taps.append(self._tap(index))
            self.head = build_head(self.backbone, config, num_classes)
        self.num_classes = num_classes

    def _build_adapter(self, index: int, merged: bool, draw_rng: random.Random) -> nn.Module:
        cfg, dim = self.config, self.backbone.num_features
        if cfg.method is Method.MOSA and not merged:
            return MoSAAdapter(
                dim, cfg.r, cfg.scale, cfg.dropout, cfg.num_experts, cfg.share,
                mask_generator=_mask_generator(cfg.mask_seed, index), draw_rng=draw_rng,
            )
        if cfg.kind is AdapterKind.BOTTLENECK:
            return BottleneckAdapter(dim, cfg.r, cfg.scale, cfg.dropout)
        qkv = self.backbone.blocks[index].attn.qkv
        return LoRADelta(qkv.in_features, qkv.out_features, cfg.r, cfg.lora_alpha)

    def _tap(self, index: int) -> Tap:
        block = self.backbone.blocks[index]
        place = parallel_mlp_tap if self.config.kind is AdapterKind.BOTTLENECK else qkv_tap
        return place(block, adding(self._delta(str(index))))

    def _delta(self, key: str) -> Callable[[Tensor], Tensor]:
        # Looked up at call time, so merge_() can swap the module behind the tap.
        return lambda h: self.adapters[key](h)

    def _tensor_prefix(self, key: str) -> str:
        """Where block `key`'s adapter tensors are named in the adapter file."""
        return f"blocks.{key}." + ("qkv." if self.config.kind is AdapterKind.LORA else "")

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone.forward_features(images))

    def train(self, mode: bool = True) -> "AdaptedViT":
        super().train(mode)
        self.backbone.eval()  # frozen: its dropout/drop-path never run in training mode
        return self

    def expert_splits(self) -> list[ExpertSplit]:
        return [m for m in self.modules() if isinstance(m, ExpertSplit)]

    @torch.no_grad()
    def merge_(self) -> "AdaptedViT":
        """Replaces every MoSA adapter by its merged dense form, in place."""
        for key, module in self.adapters.items():
            if isinstance(module, MoSAAdapter):
                self.adapters[key] = module.merge()
        return self

    def export_tensors(self) -> dict[str, Tensor]:
        """The merged adapter and head, as named for the adapter file."""
        tensors: dict[str, Tensor] = {}
        for key, module in self.adapters.items():
            deployable = module.merge() if isinstance(module, MoSAAdapter) else module
            prefix = self._tensor_prefix(key)
            for name, value in deployable.state_dict().items():
                tensors[prefix + name] = value
        for name, value in self.head.state_dict().items():
            tensors["head." + name] = value
        return {name: value.detach().to("cpu").contiguous().clone() for name, value in tensors.items()}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Loads tensors named as by `export_tensors` into a merged model."""
        for key, module in self.adapters.items():
            prefix = self._tensor_prefix(key)
            module.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)})
        self.head.load_state_dict({n[len("head."):]: t for n, t in tensors.items() if n.startswith("head.")})

    def remove_taps(self) -> None:
        """Detaches the adapters from the backbone, which then computes its bare output again."""
        for tap in self._taps:
            tap.remove()
        self._taps = []
        if isinstance(self.head, TokenMapHead):
            self.head.detach()
