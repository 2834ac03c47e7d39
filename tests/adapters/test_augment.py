"""Random shifts: each image moves as a whole, by at most the bound, the same for the same generator state."""

import torch

from mosaserve.adapters.augment import random_shift


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
