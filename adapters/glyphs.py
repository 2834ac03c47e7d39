"""Procedural stroke glyphs: a formula-driven pretraining set (in the spirit of FractalDB), unlimited and offline.

Each of `num_classes` classes is a fixed set of 1 to 3 cubic Bezier strokes with its own pen width,
drawn from a seed; every image of a class redraws it with jittered control points, a random
rotation, scale, shear and shift, and a varied pen width. Telling the classes apart needs what
hand-drawn marks need (strokes, their curvature, where they cross) without any real image.
Rendering is anti-aliased by each pixel's distance to the strokes: uint8 (N, 1, size, size).
"""

from __future__ import annotations

import torch
from torch import Tensor

SAMPLES_PER_STROKE = 12  # points along each curve; the strokes are drawn as the segments between them


class GlyphClasses:
    def __init__(self, num_classes: int, seed: int = 0, size: int = 28, max_strokes: int = 3) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.num_classes, self.size = num_classes, size
        self.control = 0.15 + 0.7 * torch.rand(num_classes, max_strokes, 4, 2, generator=generator)  # unit square
        strokes = torch.randint(1, max_strokes + 1, (num_classes,), generator=generator)
        self.present = torch.arange(max_strokes)[None] < strokes[:, None]  # (K, S)
        self.width = 1.0 + 1.5 * torch.rand(num_classes, generator=generator)  # pen width, pixels
        t = torch.linspace(0, 1, SAMPLES_PER_STROKE)
        self.bezier = torch.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], 1)  # (T, 4)
        ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        self.pixels = torch.stack([xs, ys], -1).reshape(-1, 2)  # pixel centres (P, 2)

    def render(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """One image of each label's class, freshly jittered."""
        count = len(labels)
        control = self.control[labels] + 0.035 * torch.randn(count, *self.control.shape[1:], generator=generator)
        points = torch.einsum("tk,bskd->bstd", self.bezier, random_affine(control, generator)) * self.size
        starts = points[:, :, :-1].reshape(count, -1, 2)  # segments (B, M, 2)
        steps = points[:, :, 1:].reshape(count, -1, 2) - starts
        drawn = self.present[labels].repeat_interleave(SAMPLES_PER_STROKE - 1, 1)  # (B, M)
        to_pixel = self.pixels[None, :, None] - starts[:, None]  # (B, P, M, 2)
        along = ((to_pixel * steps[:, None]).sum(-1) / (steps * steps).sum(-1).clamp(min=1e-6)[:, None]).clamp(0, 1)
        distance = (to_pixel - along[..., None] * steps[:, None]).norm(dim=-1)
        distance = distance.masked_fill(~drawn[:, None], float("inf")).amin(-1)  # (B, P)
        width = self.width[labels] * (0.8 + 0.4 * torch.rand(count, generator=generator))
        ink = (width[:, None] / 2 + 0.5 - distance).clamp(0, 1)
        return (ink * 255).round().to(torch.uint8).view(count, 1, self.size, self.size)


def random_affine(control: Tensor, generator: torch.Generator) -> Tensor:
    """Rotation (+-0.3 rad), scale (0.8-1.1), shear (+-0.2) about the centre, then a shift (+-7.5%)."""
    count = len(control)
    angle = (torch.rand(count, generator=generator) - 0.5) * 0.6
    scale = 0.8 + 0.3 * torch.rand(count, generator=generator)
    shear = (torch.rand(count, generator=generator) - 0.5) * 0.4
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrix = torch.stack([torch.stack([cos, shear - sin], -1), torch.stack([sin, cos], -1)], -2) * scale[:, None, None]
    shift = (torch.rand(count, 1, 1, 2, generator=generator) - 0.5) * 0.15
    return torch.einsum("bij,bskj->bski", matrix, control - 0.5) + 0.5 + shift
