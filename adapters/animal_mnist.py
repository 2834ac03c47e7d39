"""Animal-MNIST: 10,000 real animal silhouettes (28x28, 10 classes) from the `animal-mnist` wheel.

The data files inside the wheel are gzip-compressed pickles of numpy arrays. They are read only
after their sha256 matches the pinned release (0.4), and through an unpickler that can build
numpy arrays and nothing else, so no code from the file can run. Install without its declared
dependencies (it asks for tensorflow, which is not needed): `pip install --no-deps animal-mnist==0.4`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from .datasets import _package_dir
from .image_dataset import ImageDataset

ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
PINNED_SHA256 = {
    "animal_data_version_3.gz": "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    "animal_label_version_3.gz": "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _read_array(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != PINNED_SHA256[path.name]:
        raise ValueError(f"{path} is not the pinned animal-mnist 0.4 file (sha256 {digest[:16]}...)")
    array = _ArraysOnly(io.BytesIO(gzip.decompress(raw))).load()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path} does not hold an array")
    return array


def load_animal_mnist() -> ImageDataset:
    folder = _package_dir("animal_mnist") / "data" / "Animal_MNIST"
    images = _read_array(folder / "animal_data_version_3.gz")
    labels = _read_array(folder / "animal_label_version_3.gz")
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"unexpected animal-mnist shapes {images.shape} / {labels.shape}")
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).view(-1, 1, 28, 28)
    return ImageDataset("animal-mnist", pixels, torch.from_numpy(labels.astype(np.int64)), ANIMALS)
