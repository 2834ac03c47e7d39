"""Random shifts and warps: each image moves by at most the bound, the same for the same generator state."""

import torch

from mosaserve.adapters.augment import random_affine, random_shift


def test_each_image_moves_whole_by_at_most_the_bound_and_edges_repeat_the_border():
    images = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    shifted = random_shift(images, 2, torch.Generator().manual_seed(1))
    assert shifted.shape == images.shape
    seen = set()
    for original, moved in zip(images, shifted):
        # Some offset in [-2, 2]^2 maps the original's interior onto the moved image exactly.
        offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(moved[:, 2 + dy : 10 + dy, 2 + dx : 10 + dx], original[:, 2:10, 2:10])]
        assert len(offsets) == 1
        seen.add(offsets[0])
    assert len(seen) > 3  # the offsets vary from image to image


def test_the_same_generator_state_draws_the_same_shifts_and_zero_is_the_identity():
    images = torch.rand(8, 1, 10, 10)
    a = random_shift(images, 3, torch.Generator().manual_seed(5))
    b = random_shift(images, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, images)
    assert random_shift(images, 0, torch.Generator()) is images


def test_constant_mode_fills_the_uncovered_edge_with_zeros():
    images = torch.full((64, 1, 6, 6), 200, dtype=torch.uint8)
    shifted = random_shift(images, 1, torch.Generator().manual_seed(0), mode="constant")
    assert shifted.dtype == torch.uint8 and set(shifted.unique().tolist()) == {0, 200}
    assert (shifted[:, :, 1:5, 1:5] == 200).all()  # the interior is always covered by the image


def _centroid(images):
    h, w = images.shape[-2:]
    mass = images.sum(dim=(1, 2, 3))
    ys = (images.sum(dim=(1, 3)) * torch.arange(h)).sum(1) / mass
    xs = (images.sum(dim=(1, 2)) * torch.arange(w)).sum(1) / mass
    return torch.stack([ys, xs], 1)


def test_a_warp_moves_a_centred_blob_by_at_most_the_shift_and_keeps_a_flat_image_flat():
    grid = torch.arange(28) - 13.5
    blob = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / 8).expand(64, 1, 28, 28)
    warped = random_affine(blob, 2, 20.0, 0.1, torch.Generator().manual_seed(0))
    moved = (_centroid(warped) - _centroid(blob)).abs()
    assert moved.max() <= 2.05 and moved.std() > 0.3  # every image its own sub-pixel offset, within the bound
    flat = torch.full((4, 3, 28, 28), -0.7)
    assert torch.allclose(random_affine(flat, 2, 20.0, 0.1, torch.Generator()), flat)  # borders repeat, no black


def test_a_warp_rotates_and_is_redrawn_exactly_from_the_same_generator_state():
    images = torch.zeros(32, 1, 28, 28)
    images[:, :, 13:15, 4:24] = 1.0  # a horizontal bar
    a = random_affine(images, 0, 30.0, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_affine(images, 0, 30.0, 0.0, torch.Generator().manual_seed(3)))
    # A rotated bar leaves its middle rows: the more it turns, the more of its mass lies outside them.
    outside = 1 - a[:, :, 12:16].sum(dim=(1, 2, 3)) / a.sum(dim=(1, 2, 3))
    assert outside.max() > 0.3 and outside.min() < 0.1


def test_without_rotation_or_scaling_a_warp_is_the_whole_pixel_shift():
    images = torch.rand(8, 3, 12, 12)
    assert torch.equal(random_affine(images, 2, 0.0, 0.0, torch.Generator().manual_seed(7)),
                       random_shift(images, 2, torch.Generator().manual_seed(7)))
