"""The embedded backbone's making: safe reading of the pickled data files, and the pretraining loop."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mosaserve.adapters import animal_mnist
from mosaserve.adapters.backbone import BackboneSpec, load_backbone
from mosaserve.adapters.image_dataset import ImageDataset
from mosaserve.adapters.pretraining import PretrainConfig, augment, pretrain, save_embedded

from ..conftest import TINY_VIT


def pinned_file(tmp_path, monkeypatch, payload: bytes):
    path = tmp_path / "animal_data_version_3.gz"
    path.write_bytes(gzip.compress(payload))
    monkeypatch.setitem(animal_mnist.PINNED_SHA256, path.name, hashlib.sha256(path.read_bytes()).hexdigest())
    return path


def halves(count: int) -> ImageDataset:
    """Two separable classes: a bright top half or a bright bottom half over dim noise."""
    torch.manual_seed(0)
    images = torch.randint(0, 40, (count, 1, 16, 16), dtype=torch.uint8)
    labels = torch.arange(count) % 2
    images[labels == 0, :, :8] += 200
    images[labels == 1, :, 8:] += 200
    return ImageDataset("halves", images, labels, ("top", "bottom"))


def test_data_files_load_numpy_arrays_only(tmp_path, monkeypatch):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = pinned_file(tmp_path, monkeypatch, pickle.dumps(array))
    assert (animal_mnist._read_array(path) == array).all()

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = pinned_file(tmp_path, monkeypatch, pickle.dumps(Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        animal_mnist._read_array(evil)


def test_data_files_must_be_the_pinned_release(tmp_path, monkeypatch):
    path = pinned_file(tmp_path, monkeypatch, pickle.dumps(np.zeros(3)))
    path.write_bytes(gzip.compress(pickle.dumps(np.ones(3))))  # same name, other bytes
    with pytest.raises(ValueError, match="not the pinned"):
        animal_mnist._read_array(path)


def test_augment_shifts_and_flips_without_changing_shapes():
    images = torch.zeros(64, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 3:5, 3:5] = 255
    out = augment(images, max_shift=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    centres = {tuple(torch.nonzero(o[0])[0].tolist()) for o in out}
    assert len(centres) > 5  # different translations across the batch


def test_pretraining_learns_and_its_checkpoint_loads_as_a_backbone(tmp_path):
    """Two separable classes (bright top half vs bright bottom half; flips are horizontal): a tiny ViT learns them."""
    data = halves(320)
    cfg = PretrainConfig(epochs=4, batch_size=32, lr=2e-3, val_size=64, max_shift=1, glyph_classes=0)
    backbone, result = pretrain(TINY_VIT, data, cfg)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert result.val_accuracy >= 0.9
    path = save_embedded(backbone, tmp_path / "bb.safetensors", TINY_VIT, cfg, result)
    spec = BackboneSpec(TINY_VIT.name, TINY_VIT.kwargs, str(path), seed=99)
    model, info = load_backbone(spec)
    assert model.num_classes == 0 and info.fingerprint == load_backbone(spec)[1].fingerprint
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_glyph_classes_are_the_same_for_a_seed_and_their_images_resemble_their_own_class():
    from mosaserve.adapters.glyphs import GlyphClasses

    glyphs = GlyphClasses(8, seed=3, size=20)
    assert torch.equal(glyphs.control, GlyphClasses(8, seed=3, size=20).control)
    assert not torch.equal(glyphs.control, GlyphClasses(8, seed=4, size=20).control)
    labels = torch.arange(8).repeat(20)
    images = glyphs.render(labels, torch.Generator().manual_seed(0))
    assert images.shape == (160, 1, 20, 20) and images.dtype == torch.uint8
    inked = (images > 0).flatten(1).float().mean(1)
    assert bool((inked > 0.02).all()) and bool((inked < 0.6).all())  # strokes, neither empty nor filled
    # Nearest class mean (leave-one-out-free, means from the other half): instances share their class's shape.
    flat = images.flatten(1).float()
    means = torch.stack([flat[80:][labels[80:] == k].mean(0) for k in range(8)])
    nearest = torch.cdist(flat[:80], means).argmin(1)
    assert float((nearest == labels[:80]).float().mean()) >= 0.7


def test_pretraining_with_glyphs_learns_both_and_keeps_the_backbone_shape(tmp_path):
    data = halves(192)
    cfg = PretrainConfig(epochs=10, batch_size=32, lr=2e-3, val_size=64, max_shift=1, glyph_classes=2,
                         glyphs_per_batch=64)
    backbone, result = pretrain(TINY_VIT, data, cfg)
    assert result.val_accuracy >= 0.9 and result.history[-1]["glyph_val_accuracy"] >= 0.7  # chance: 0.5
    path = save_embedded(backbone, tmp_path / "bb.safetensors", TINY_VIT, cfg, result)
    model, _ = load_backbone(BackboneSpec(TINY_VIT.name, TINY_VIT.kwargs, str(path)))
    assert model.num_classes == 0


def test_shaded_classes_are_grey_images_that_resemble_their_own_class():
    from mosaserve.adapters.shaded import ShadedClasses

    shaded = ShadedClasses(8, seed=3, size=20)
    assert torch.equal(shaded.centre, ShadedClasses(8, seed=3, size=20).centre)
    assert not torch.equal(shaded.centre, ShadedClasses(8, seed=4, size=20).centre)
    labels = torch.arange(8).repeat(20)
    images = shaded.render(labels, torch.Generator().manual_seed(0))
    assert images.shape == (160, 1, 20, 20) and images.dtype == torch.uint8
    assert all(len(image.unique()) > 40 for image in images)  # shaded grey levels, not ink on a ground
    flat = images.flatten(1).float()
    flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)  # brightness and contrast vary
    means = torch.stack([flat[80:][labels[80:] == k].mean(0) for k in range(8)])
    nearest = torch.cdist(flat[:80], means).argmin(1)
    assert float((nearest == labels[:80]).float().mean()) >= 0.7


def test_pretraining_with_glyphs_and_shaded_blobs_learns_all_three(tmp_path):
    data = halves(192)
    cfg = PretrainConfig(epochs=10, batch_size=32, lr=2e-3, val_size=64, max_shift=1, glyph_classes=2,
                         glyphs_per_batch=32, shaded_classes=2, shaded_per_batch=32)
    backbone, result = pretrain(TINY_VIT, data, cfg)
    last = result.history[-1]
    assert result.val_accuracy >= 0.9 and last["glyph_val_accuracy"] >= 0.7 and last["shaded_val_accuracy"] >= 0.7
    path = save_embedded(backbone, tmp_path / "bb.safetensors", TINY_VIT, cfg, result)
    assert "shaded-blob" in safe_open(str(path), "pt").metadata()["data"]
