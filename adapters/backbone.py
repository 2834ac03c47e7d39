"""The frozen timm Vision Transformer every task shares: how to build it, and who it is.

A backbone is named by its timm model name plus creation keyword arguments (image size, patch
size, depth, ...) and, optionally, a local checkpoint file. Nothing is ever downloaded: timm's hub
is unreachable offline, so pretrained weights always come from a file the user has.
Its identity is a fingerprint of its weights, so an adapter trained on one backbone is refused by
another even when both share an architecture.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .errors import BackboneError

if TYPE_CHECKING:  # timm is imported where a model is built: processes that only read adapter files start faster
    from timm.models.vision_transformer import VisionTransformer


@dataclass(frozen=True)
class BackboneSpec:
    """What to build: a timm model name, its creation kwargs and an optional local checkpoint.

    Without a checkpoint the weights are random, drawn from `seed` by `portable_random_init_`, so every
    process (every serving replica, on any CPU) that builds the same spec gets the same backbone and
    fingerprint.
    """

    name: str = "vit_tiny_patch16_224"
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class BackboneInfo:
    """What an adapter file records about the backbone it was trained on."""

    name: str
    kwargs: dict[str, Any]
    fingerprint: str
    num_features: int
    depth: int
    input_size: tuple[int, int, int]  # (channels, height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    num_patches: int | None = None  # patch tokens of forward_features; None: not recorded (format 1 files)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("input_size", "mean", "std"):
            data[key] = list(data[key])
        return data


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every tensor of the state dict: name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Loads weights from .safetensors, or from a torch file with weights_only (never a full unpickle)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(
            f"backbone checkpoint {str(path)!r} does not exist; pretrained weights must be a local file "
            "(no hub download is attempted)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad checkpoint to the user
        raise BackboneError(f"cannot read backbone checkpoint {str(path)!r}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict") or state.get("model"), dict):
        state = state.get("state_dict") or state.get("model")
    if not isinstance(state, dict):
        raise BackboneError(f"backbone checkpoint {str(path)!r} holds no state dict")
    return state


def load_checkpoint_into(model: nn.Module, path: str | Path) -> None:
    """Strictly loads backbone weights; a classifier head in the file is ignored (tasks bring their own)."""
    state = {k: v for k, v in read_checkpoint(path).items() if not k.startswith("head.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BackboneError(f"checkpoint {str(path)!r} does not fit backbone: {exc}") from exc


def build_model(spec: BackboneSpec) -> VisionTransformer:
    """The bare timm ViT of `spec` without a classifier head (forward returns pooled features)."""
    import timm
    from timm.models.vision_transformer import Block, VisionTransformer

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = timm.create_model(spec.name, pretrained=False, num_classes=0, **spec.kwargs)
            if spec.checkpoint is None:
                portable_random_init_(model, spec.seed)
    except Exception as exc:  # noqa: BLE001 - unknown names and bad kwargs both land here
        raise BackboneError(f"cannot build timm model {spec.name!r} with {spec.kwargs}: {exc}") from exc
    if not isinstance(model, VisionTransformer) or not all(isinstance(b, Block) for b in model.blocks):
        raise BackboneError(f"{spec.name!r} is not a timm VisionTransformer made of pre-norm Blocks")
    if spec.checkpoint is not None:
        load_checkpoint_into(model, spec.checkpoint)
    return model


def portable_random_init_(model: nn.Module, seed: int) -> None:
    """Redraws every tensor timm initialised at random from integers alone, so a seed means the same weights on any CPU.

    timm draws with trunc_normal_ and normal_, whose CPU kernels (erfinv, Box-Muller) round
    differently on different vector units: one seed gave other weights, and another fingerprint, on
    an Intel machine than on an AMD one. Integer draws and elementwise arithmetic round the same
    everywhere. Each random tensor becomes uniform with timm's standard deviation, rounded to one
    significant digit so that the last-bit differences of the first draw cannot reach it; constant
    tensors (LayerNorm ones, zero biases) are kept.
    """
    generator = torch.Generator().manual_seed(seed)
    half_range = 2**23
    with torch.no_grad():
        for _, tensor in sorted(model.state_dict().items()):
            if not tensor.is_floating_point() or tensor.numel() < 2 or bool((tensor == tensor.flatten()[0]).all()):
                continue
            std = float(f"{tensor.double().std().item():.0e}")
            draws = torch.randint(-half_range, half_range + 1, tensor.shape, generator=generator, dtype=torch.int64)
            tensor.copy_(draws.to(torch.float64) * (std * 3**0.5 / half_range))


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def describe(model: VisionTransformer, spec: BackboneSpec) -> BackboneInfo:
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(model)
    return BackboneInfo(
        name=spec.name,
        kwargs=dict(spec.kwargs),
        fingerprint=weights_fingerprint(model),
        num_features=model.num_features,
        depth=len(model.blocks),
        # The model's own image size: the pretrained config's may differ when img_size was overridden.
        input_size=(int(model.patch_embed.proj.in_channels), *(int(v) for v in model.patch_embed.img_size)),
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
        interpolation=str(data.get("interpolation", "bicubic")),
        crop_pct=float(data.get("crop_pct", 1.0)),
        num_patches=int(model.patch_embed.num_patches),
    )


def load_backbone(spec: BackboneSpec) -> tuple[VisionTransformer, BackboneInfo]:
    """Builds, loads and freezes the backbone; returns it with its identity card."""
    model = freeze(build_model(spec))
    return model, describe(model, spec)


def save_backbone(model: nn.Module, path: str | Path) -> None:
    """Writes the backbone's weights as a safetensors checkpoint that `BackboneSpec.checkpoint` accepts."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = Path(path).with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
