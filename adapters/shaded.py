"""Procedural shaded blobs: formula-driven grey-level images with texture, unlimited and offline.

Silhouettes and stroke glyphs are ink on a black ground; photographs are not. Each of `num_classes`
classes here is a fixed layout of 2 to 5 elliptical blobs, each with its own size, orientation and
signed contrast, lit by the class's own gradient over a ground of 1/f noise of the class's slope (the
spectrum of natural images, as in Baradad et al., NeurIPS 2021). Every image of a class jitters the
layout, redraws the noise and varies brightness and contrast, so telling the classes apart needs
what grey images need: where darker and lighter regions sit, their shapes and shading.
uint8 (N, 1, size, size).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .glyphs import random_affine


class ShadedClasses:
    def __init__(self, num_classes: int, seed: int = 0, size: int = 28, max_blobs: int = 5) -> None:
        generator = torch.Generator().manual_seed(seed)
        shape = (num_classes, max_blobs)
        self.num_classes, self.size = num_classes, size
        self.centre = 0.15 + 0.7 * torch.rand(*shape, 2, generator=generator)  # unit square
        self.spread = 0.04 + 0.16 * torch.rand(*shape, 2, generator=generator)  # sd per axis, fraction of the side
        self.angle = math.pi * torch.rand(shape, generator=generator)
        self.level = 2 * torch.rand(shape, generator=generator) - 1  # signed contrast of each blob
        blobs = torch.randint(2, max_blobs + 1, (num_classes,), generator=generator)
        self.present = torch.arange(max_blobs)[None] < blobs[:, None]
        self.light = 0.8 * torch.randn(num_classes, 2, generator=generator)  # the shading gradient
        self.slope = 1.0 + 1.5 * torch.rand(num_classes, generator=generator)  # of the ground's 1/f spectrum
        coords = (torch.arange(size) + 0.5) / size
        ys, xs = torch.meshgrid(coords, coords, indexing="ij")
        self.pixels = torch.stack([xs, ys], -1).reshape(-1, 2)  # pixel centres in the unit square (P, 2)
        fy, fx = torch.meshgrid(torch.fft.fftfreq(size), torch.fft.rfftfreq(size), indexing="ij")
        self.frequency = (fx**2 + fy**2).sqrt().clamp(min=1.0 / size)

    def render(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """One image of each label's class, freshly jittered."""
        count = len(labels)
        centre = self.centre[labels] + 0.03 * torch.randn(count, *self.centre.shape[1:], generator=generator)
        centre = random_affine(centre[:, :, None], generator)[:, :, 0]  # (N, B, 2)
        image = self._blobs(labels, centre, generator) + self._light(labels) + self._ground(labels, generator)
        return _to_uint8(image, generator).view(count, 1, self.size, self.size)

    def _blobs(self, labels: Tensor, centre: Tensor, generator: torch.Generator) -> Tensor:
        count = len(labels)
        angle = self.angle[labels] + 0.2 * torch.randn(centre.shape[:2], generator=generator)
        cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]  # (N, 1, B)
        offset = self.pixels[None, :, None] - centre[:, None]  # (N, P, B, 2)
        along = offset[..., 0] * cos + offset[..., 1] * sin
        across = offset[..., 1] * cos - offset[..., 0] * sin
        spread = self.spread[labels][:, None]  # (N, 1, B, 2)
        shape = torch.exp(-0.5 * ((along / spread[..., 0]) ** 2 + (across / spread[..., 1]) ** 2))
        level = self.level[labels] * (0.7 + 0.6 * torch.rand(count, self.level.shape[1], generator=generator))
        return (shape * (level * self.present[labels])[:, None]).sum(-1)  # (N, P)

    def _light(self, labels: Tensor) -> Tensor:
        return ((self.pixels[None] - 0.5) * self.light[labels][:, None]).sum(-1)  # (N, P)

    def _ground(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """Fresh noise with the class's 1/f^slope spectrum, unit sd, at a random strength."""
        count = len(labels)
        noise = torch.randn(count, self.size, self.size, generator=generator)
        filtered = torch.fft.rfft2(noise) / self.frequency[None] ** self.slope[labels][:, None, None]
        ground = torch.fft.irfft2(filtered, s=(self.size, self.size)).reshape(count, -1)
        ground = (ground - ground.mean(1, keepdim=True)) / ground.std(1, keepdim=True).clamp(min=1e-6)
        return ground * (0.05 + 0.2 * torch.rand(count, 1, generator=generator))


def _to_uint8(image: Tensor, generator: torch.Generator) -> Tensor:
    """Standardised per image, then a random brightness and contrast, clipped to the grey range."""
    count = len(image)
    image = (image - image.mean(1, keepdim=True)) / image.std(1, keepdim=True).clamp(min=1e-6)
    contrast = 35 + 35 * torch.rand(count, 1, generator=generator)
    brightness = 90 + 80 * torch.rand(count, 1, generator=generator)
    return (image * contrast + brightness).clamp(0, 255).round().to(torch.uint8)
