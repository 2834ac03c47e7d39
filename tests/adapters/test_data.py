import torch

from mosaserve.adapters.backbone import BackboneInfo
from mosaserve.adapters.datasets import load_builtin
from mosaserve.adapters.image_dataset import train_test_split
from mosaserve.adapters.preprocess import Preprocessor

INFO = BackboneInfo("x", {}, "0" * 64, 8, 1, (3, 16, 16), (0.5, 0.4, 0.3), (0.25, 0.2, 0.1), "bilinear", 0.875)


def test_builtin_mnist_is_the_real_5k_subset():
    data = load_builtin("mnist")
    assert data.images.shape == (5000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert torch.bincount(data.labels).tolist() == [500] * 10
    assert 0 < data.images.float().mean() < 80  # dark background, bright strokes


def test_builtin_digits():
    data = load_builtin("digits")
    assert data.images.shape == (1797, 1, 8, 8) and int(data.images.max()) == 255


def test_builtin_faces_are_lfw_crops_and_non_faces():
    data = load_builtin("faces")
    assert data.images.shape == (200, 1, 25, 25) and data.images.dtype == torch.uint8
    assert data.class_names == ("face", "not a face") and data.labels.bincount().tolist() == [100, 100]
    assert data.images.float().std() > 20  # real photographs, not a blank or constant array


def test_split_is_disjoint_and_seeded():
    data = load_builtin("digits")
    a_train, a_test = train_test_split(data, 100, 50, seed=1)
    b_train, _ = train_test_split(data, 100, 50, seed=1)
    assert torch.equal(a_train.images, b_train.images) and len(a_test) == 50


def test_preprocess_normalises_with_backbone_mean_and_std():
    white = torch.full((1, 20, 30), 255, dtype=torch.uint8)
    out = Preprocessor(INFO)(white)
    assert out.shape == (1, 3, 16, 16)  # grey -> RGB, resized and centre-cropped to the input size
    expected = torch.tensor([(1 - 0.5) / 0.25, (1 - 0.4) / 0.2, (1 - 0.3) / 0.1])
    torch.testing.assert_close(out[0, :, 8, 8], expected)


def test_preprocess_drops_alpha_and_crops_the_centre():
    rgba = torch.zeros(4, 32, 64, dtype=torch.uint8)
    rgba[:3, :, 24:40] = 255  # a white vertical band in the middle
    rgba[3] = 7
    out = Preprocessor(INFO)(rgba)[0]
    assert out.shape == (3, 16, 16)
    assert out[0, 8, 8] > 1.5 and out[0, 8, 0] < -1.5  # the band is centred, the borders dark


def test_extreme_aspect_ratios_are_cropped_before_resizing():
    """A 2 x 200,000 strip must not be resized to 16 x 1.6M floats first; its centre still comes out."""
    strip = torch.zeros(3, 2, 200_000, dtype=torch.uint8)
    strip[:, :, 99_999:100_001] = 255  # a white mark in the middle
    out = Preprocessor(INFO)(strip)[0]
    assert out.shape == (3, 16, 16) and out[0].max() > 1.5
    square = torch.randint(0, 256, (3, 12, 40), dtype=torch.uint8)  # up to 4:1: untouched by the guard
    from mosaserve.adapters.preprocess import _limit_aspect

    assert _limit_aspect(square[None], 4).shape[-1] == 40 and _limit_aspect(strip[None], 4).shape[-1] == 8
