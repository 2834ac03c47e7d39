"""The adapter method and its hyper-parameters, as a dataclass that round-trips to JSON."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import AdapterConfigError
from .mosa import SHARE_MODES


def is_finite_number(value: float | int) -> bool:
    """math.isfinite that says False, not OverflowError, for an integer too large for a float (JSON has them)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False

class Method(str, enum.Enum):
    """How a task's adapter is trained; a str, so it equals and serialises as its value."""

    MOSA = "mosa"  # sparse experts trained stochastically, merged into one bottleneck adapter
    ADAPTER = "adapter"  # a dense parallel bottleneck adapter
    LORA = "lora"  # low-rank deltas on the fused qkv
    LINEAR = "linear"  # the head alone: the linear probe

    def __str__(self) -> str:
        return self.value


METHODS = tuple(Method)


class AdapterKind(str, enum.Enum):
    """What a merged adapter is at inference; a str, so it equals and serialises as its value."""

    BOTTLENECK = "bottleneck"  # a parallel bottleneck on each adapted block's MLP
    LORA = "lora"  # a low-rank delta on each adapted block's fused qkv
    HEAD_ONLY = "head_only"  # no block weights: the linear probe

    def __str__(self) -> str:
        # f-strings and str() give "lora", not "AdapterKind.LORA", on every supported Python.
        return self.value


# What a merged adapter of each method looks like at inference: MoSA merges into a standard
# bottleneck adapter, so the runtime sees only three kinds.
KIND_OF_METHOD: dict[Method, AdapterKind] = {
    Method.MOSA: AdapterKind.BOTTLENECK, Method.ADAPTER: AdapterKind.BOTTLENECK,
    Method.LORA: AdapterKind.LORA, Method.LINEAR: AdapterKind.HEAD_ONLY,
}


class Head(str, enum.Enum):
    """What a task's head reads (adapters/heads.py); a str, so it equals and serialises as its value."""

    TOKENS = "tokens"  # every patch token through a low-rank projection, keeping where it was
    TOKENS_MID = "tokens_mid"  # the same over each patch's final and middle-block tokens side by side
    POOLED = "pooled"  # the backbone's pooled features: the only head of format 1 files, still served

    def __str__(self) -> str:
        return self.value

    @property
    def reads_patches(self) -> bool:
        return self is not Head.POOLED


HEADS = tuple(Head)


def _is_instance(value: Any, expected: type | tuple[type, ...]) -> bool:
    # JSON has no int/bool distinction worth trusting: True is not a rank.
    return isinstance(value, expected) and not isinstance(value, bool)


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "method": str, "r": int, "scale": (int, float), "dropout": (int, float), "num_experts": int,
    "share": str, "consistency_weight": (int, float), "mask_seed": int, "lora_alpha": (int, float),
    "target_blocks": (list, tuple, type(None)), "head": str, "head_rank": int,
}


@dataclass(frozen=True)
class AdapterConfig:
    """How a task adapts the frozen backbone. Defaults follow the MoSA paper (VTAB-1k setting)."""

    method: Method = Method.MOSA
    r: int = 16  # bottleneck width (adapter) or rank (LoRA)
    scale: float = 0.1  # s in x + MLP(LN2(x)) + s * adapter(x)
    dropout: float = 0.1  # inside the bottleneck
    num_experts: int = 4  # K, MoSA only
    share: str = "down"  # MoSA: which projection stays dense ("down" splits Up)
    consistency_weight: float = 1.0  # MoSA: weight of the symmetric KL between two draws; 0 disables
    mask_seed: int = 0  # MoSA: the expert masks are reproducible from this seed
    lora_alpha: float = 16.0  # LoRA scaling numerator (scaling = alpha / r)
    target_blocks: tuple[int, ...] | None = None  # None: every block
    head: Head = Head.TOKENS
    head_rank: int = 16  # "tokens" head: features kept per patch token

    def __post_init__(self) -> None:
        for name in ("scale", "dropout", "consistency_weight", "lora_alpha"):
            # NaN passes every range check below and makes every prediction NaN; JSON headers can carry it.
            if not is_finite_number(getattr(self, name)):
                raise AdapterConfigError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if self.method not in METHODS:
            raise AdapterConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        object.__setattr__(self, "method", Method(self.method))
        if self.r < 1:
            raise AdapterConfigError(f"r must be a positive integer, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head not in HEADS:
            raise AdapterConfigError(f"head must be one of {HEADS}, got {self.head!r}")
        object.__setattr__(self, "head", Head(self.head))
        if self.head_rank < 1:
            raise AdapterConfigError(f"head_rank must be a positive integer, got {self.head_rank}")
        if self.share not in SHARE_MODES:
            raise AdapterConfigError(f"share must be one of {SHARE_MODES}, got {self.share!r}")
        if self.method is Method.MOSA and not 2 <= self.num_experts <= 255:
            raise AdapterConfigError(f"num_experts must be in [2, 255] for MoSA, got {self.num_experts}")
        if self.consistency_weight < 0:
            raise AdapterConfigError(f"consistency_weight must be >= 0, got {self.consistency_weight}")
        if self.target_blocks is not None:
            blocks = tuple(self.target_blocks)
            if not blocks or any(not isinstance(b, int) or b < 0 for b in blocks) or len(set(blocks)) != len(blocks):
                raise AdapterConfigError(f"target_blocks must be distinct non-negative block indices, got {blocks}")
            object.__setattr__(self, "target_blocks", tuple(sorted(blocks)))

    @property
    def kind(self) -> AdapterKind:
        return KIND_OF_METHOD[self.method]

    def resolve_blocks(self, depth: int) -> tuple[int, ...]:
        """The block indices this config adapts in a backbone of `depth` blocks."""
        if self.kind is AdapterKind.HEAD_ONLY:
            return ()
        blocks = tuple(range(depth)) if self.target_blocks is None else self.target_blocks
        if blocks and blocks[-1] >= depth:
            raise AdapterConfigError(f"target block {blocks[-1]} does not exist in a backbone of {depth} blocks")
        return blocks

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_blocks"] = None if self.target_blocks is None else list(self.target_blocks)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterConfigError(f"unknown adapter config fields: {unknown}")
        for name, expected in _FIELD_TYPES.items():
            if name in data and not _is_instance(data[name], expected):
                raise AdapterConfigError(f"adapter config field {name!r} has the wrong type: {data[name]!r}")
        values = dict(data)
        if values.get("target_blocks") is not None:
            values["target_blocks"] = tuple(values["target_blocks"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise AdapterConfigError(f"invalid adapter config: {exc}") from exc
