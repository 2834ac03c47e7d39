"""A labelled image dataset held in memory, and its seeded train/test split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ImageDataset:
    name: str
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Tensor) -> "ImageDataset":
        return ImageDataset(self.name, self.images[indices], self.labels[indices], self.class_names)


def train_test_split(dataset: ImageDataset, train_size: int, test_size: int, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """A seeded random split into disjoint train and test subsets."""
    if train_size + test_size > len(dataset):
        raise ValueError(f"{dataset.name} has {len(dataset)} images, fewer than {train_size} + {test_size}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(order[:train_size]), dataset.subset(order[train_size : train_size + test_size])
