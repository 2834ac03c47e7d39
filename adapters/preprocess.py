"""Image preprocessing from the backbone's config: one place for training and serving.

Input is a decoded image as a uint8 tensor (C, H, W) or a batch (N, C, H, W), with 1 (grey),
3 (RGB) or 4 (RGBA) channels. Resize the shorter side to size / crop_pct, centre-crop to the
backbone's input size, scale to [0, 1] and normalise with the backbone's mean and std.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .backbone import BackboneInfo

MAX_ASPECT = 4  # longer side kept up to 4x the shorter one; the centre crop never reaches further


def _limit_aspect(batch: Tensor, max_aspect: int) -> Tensor:
    """Centre-crops the longer side to `max_aspect` times the shorter one before resizing.

    Resizing scales the shorter side to the input size, so a 1 x 100,000 image would otherwise be
    resized to tens of millions of pixels (gigabytes) only to keep its centre. Up to 4:1 nothing
    changes; beyond, the cut-away parts lie far outside the final crop.
    """
    height, width = batch.shape[-2:]
    if height > max_aspect * width:
        top = (height - max_aspect * width) // 2
        return batch[..., top : top + max_aspect * width, :]
    if width > max_aspect * height:
        left = (width - max_aspect * height) // 2
        return batch[..., left : left + max_aspect * height]
    return batch


_INTERPOLATION = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


class Preprocessor:
    def __init__(self, info: BackboneInfo) -> None:
        self.channels, self.height, self.width = info.input_size
        self.crop_pct = info.crop_pct
        self.mode = _INTERPOLATION.get(info.interpolation, "bilinear")
        self.mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 (N, C, H, W) or (C, H, W) -> normalised float32 (N, 3, height, width)."""
        if images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images, got {images.dtype}")
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4 or batch.shape[1] not in (1, 3, 4):
            raise ValueError(f"expected images shaped (N, C, H, W) with 1, 3 or 4 channels, got {tuple(images.shape)}")
        batch = self._to_rgb(batch).float().div_(255.0)
        batch = self._resize_and_crop(batch)
        return (batch - self.mean) / self.std

    def _to_rgb(self, batch: Tensor) -> Tensor:
        if batch.shape[1] == 4:
            batch = batch[:, :3]  # alpha is dropped: the backbone was trained on opaque images
        if batch.shape[1] == 1 and self.channels == 3:
            batch = batch.expand(-1, 3, -1, -1)
        return batch

    def _resize_and_crop(self, batch: Tensor) -> Tensor:
        return resize_and_center_crop(batch, self.height, self.width, self.crop_pct, self.mode, max_value=1.0)


def resize_and_center_crop(batch: Tensor, height: int, width: int, crop_pct: float = 1.0, mode: str = "bilinear",
                           max_value: float = 1.0) -> Tensor:
    """Float images (N, C, H, W): shorter side resized to size / crop_pct, then the centre crop (timm's eval
    transform). Values stay within [0, max_value]; the aspect ratio is capped first (see `_limit_aspect`)."""
    batch = _limit_aspect(batch, MAX_ASPECT)
    in_h, in_w = batch.shape[-2:]
    scale = max(height, width) / crop_pct / min(in_h, in_w)
    new_h, new_w = max(height, math.floor(in_h * scale)), max(width, math.floor(in_w * scale))
    if (new_h, new_w) != (in_h, in_w):
        smooth = {} if mode == "nearest" else {"align_corners": False, "antialias": True}
        batch = F.interpolate(batch, size=(new_h, new_w), mode=mode, **smooth).clamp_(0.0, max_value)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return batch[:, :, top : top + height, left : left + width]
