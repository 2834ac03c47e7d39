"""The embedded backbone's making: safe reading of the pickled data files, and the pretraining loop."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

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
    torch.manual_seed(0)
    images = torch.randint(0, 40, (320, 1, 16, 16), dtype=torch.uint8)
    labels = torch.arange(320) % 2
    images[labels == 0, :, :8] += 200
    images[labels == 1, :, 8:] += 200
    data = ImageDataset("halves", images, labels, ("top", "bottom"))
    cfg = PretrainConfig(epochs=4, batch_size=32, lr=2e-3, val_size=64, max_shift=1)
    backbone, result = pretrain(TINY_VIT, data, cfg)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert result.val_accuracy >= 0.9
    path = save_embedded(backbone, tmp_path / "bb.safetensors", TINY_VIT, cfg, result)
    spec = BackboneSpec(TINY_VIT.name, TINY_VIT.kwargs, str(path), seed=99)
    model, info = load_backbone(spec)
    assert model.num_classes == 0 and info.fingerprint == load_backbone(spec)[1].fingerprint
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32)
