"""Datasets from image files: an image-folder tree, or a list file of `path label` lines.

- image folder: `root/<class name>/<image>.{jpg,jpeg,png}`; classes are the sorted folder names.
- list file (the VTAB-1k / FGVC style of the PEFT literature): one `relative/path.jpg label` per
  line, the label an integer or a class name; paths are relative to the list file's folder (or
  `root`) and must stay inside it.
Images are decoded by the same code as served requests (JPEG/PNG/WebP, any mode to RGB, pixel limit),
then resized (shorter side) and centre-cropped to `image_size`, so they stack into one tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .image_dataset import ImageDataset
from .images import BadImageError, decode_image
from .preprocess import resize_and_center_crop

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or holds an unreadable image."""


def load_image_folder(root: str | Path, image_size: int) -> ImageDataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(path, label) for label, name in enumerate(classes) for path in sorted((root / name).iterdir())
             if path.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not files:
        raise DatasetError(f"{root} needs at least two class folders holding .jpg/.png/.webp images")
    return _dataset(root.name, files, tuple(classes), image_size)


def load_list_file(list_file: str | Path, image_size: int, root: str | Path | None = None) -> ImageDataset:
    list_file = Path(list_file)
    base = Path(root) if root is not None else list_file.parent
    try:
        lines = [line.rsplit(maxsplit=1) for line in list_file.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read list file {list_file}: {exc}") from exc
    if not lines or any(len(parts) != 2 for parts in lines):
        raise DatasetError(f"{list_file}: every line must be 'path label'")
    names = _class_names([label for _, label in lines])
    index = {name: i for i, name in enumerate(names)}
    files = [(_inside(base, path), index[label]) for path, label in lines]
    return _dataset(list_file.stem, files, names, image_size)


def _class_names(labels: list[str]) -> tuple[str, ...]:
    distinct = set(labels)
    if all(label.isdigit() for label in distinct):
        return tuple(sorted(distinct, key=int))  # integer labels keep their numeric order
    return tuple(sorted(distinct))


def _inside(base: Path, relative: str) -> Path:
    path = (base / relative).resolve()
    if not path.is_relative_to(base.resolve()):
        raise DatasetError(f"list file path {relative!r} leaves the dataset folder {base}")
    return path


def _dataset(name: str, files: list[tuple[Path, int]], classes: tuple[str, ...], image_size: int) -> ImageDataset:
    images = torch.stack([square_crop(_read(path), image_size) for path, _ in files])
    return ImageDataset(name, images, torch.tensor([label for _, label in files]), classes)


def _read(path: Path) -> Tensor:
    try:
        return decode_image(path.read_bytes())
    except (OSError, BadImageError) as exc:
        raise DatasetError(f"{path}: {exc}") from exc


def square_crop(image: Tensor, size: int) -> Tensor:
    """uint8 (3, H, W) -> uint8 (3, size, size) by the serving resize and centre crop (crop_pct 1)."""
    cropped = resize_and_center_crop(image[None].float(), size, size, max_value=255.0)[0]
    return cropped.round().to(torch.uint8)
