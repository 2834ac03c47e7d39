"""Random translations of a batch of images, drawn from a given generator so a resumed run redraws them exactly."""

from __future__ import annotations

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
