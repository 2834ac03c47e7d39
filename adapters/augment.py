"""Random translations and small affine warps of a batch of images, drawn from a given generator so a resumed
run redraws them exactly."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator, mode: str = "replicate") -> Tensor:
    """Each image (N, C, H, W) moved by up to `max_shift` pixels along each axis.

    The uncovered edge is filled by `mode`: "replicate" repeats the border (works on normalised
    images, whose zero is not the background), "constant" fills zeros (black, for uint8 images).
    """
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, mode=mode)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def random_affine(images: Tensor, max_shift: float, max_rotation: float, max_scale: float,
                  generator: torch.Generator) -> Tensor:
    """Each image (N, C, H, W) rotated by up to `max_rotation` degrees, scaled by 1 +- `max_scale` and moved by
    up to `max_shift` pixels (sub-pixel, bilinear), all about its centre; the uncovered edge repeats the
    border. With no rotation and no scaling this is `random_shift`, whole pixels, as before.
    """
    if max_rotation == 0 and max_scale == 0:
        return random_shift(images, int(max_shift), generator)
    n, _, h, w = images.shape
    draw = torch.rand(n, 4, generator=generator) * 2 - 1
    angle = draw[:, 0] * math.radians(max_rotation)
    scale = 1 + draw[:, 1] * max_scale
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    warp = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    # affine_grid maps output to input coordinates in [-1, 1] (a pixel is 2 / size): sampling at warp(x - d)
    # moves the content by d whatever the rotation.
    d = torch.stack([draw[:, 2] * 2 * max_shift / w, draw[:, 3] * 2 * max_shift / h], 1)
    theta = torch.cat([warp, -(warp @ d[:, :, None])], 2).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
