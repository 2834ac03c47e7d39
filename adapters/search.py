"""Training settings chosen on validation images carved out of the training budget, never on the test split.

VTAB-1k's protocol: 80% of the budget trains and 20% validates (800 / 200 at 1,000 images). The
learning rate is searched at the default schedule, then the schedule's length at the best learning
rate (a coordinate search: the full grid would double the cost for the longest runs); the chosen
settings then retrain on the whole budget.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from .image_dataset import ImageDataset
from .task_training import TrainedTask
from .training import TrainConfig


@dataclass(frozen=True)
class SearchGrid:
    lrs: tuple[float, ...] = (2.5e-3, 5e-3, 1e-2)
    epoch_scales: tuple[int, ...] = (1, 2)  # multiples of the default schedule's epochs; the first is the lr search's
    validation_fraction: float = 0.2


FULL_GRID = SearchGrid()
QUICK_GRID = SearchGrid(lrs=(5e-3, 1e-2), epoch_scales=(1,))


@dataclass(frozen=True)
class SearchCell:
    lr: float
    epoch_scale: int
    epochs: int
    val_accuracy: float
    curve: tuple[dict[str, float], ...]


@dataclass(frozen=True)
class SearchOutcome:
    lr: float
    epoch_scale: int
    train_images: int
    val_images: int
    cells: tuple[SearchCell, ...]

    def config_for(self, base: TrainConfig, examples: int) -> TrainConfig:
        """The chosen settings for a run over `examples` images: the chosen multiple of its default schedule."""
        return replace(base, lr=self.lr, epochs=self.epoch_scale * base.epochs_for(examples))

    def to_dict(self) -> dict:
        return asdict(self)


def validation_split(train: ImageDataset, fraction: float) -> tuple[ImageDataset, ImageDataset]:
    """A fixed 1 - fraction / fraction split of the training budget (the same for every method and seed)."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    held = min(len(train) - 1, max(1, round(fraction * len(train))))
    return train.subset(order[held:]), train.subset(order[:held])


TrainOnSplit = Callable[[ImageDataset, ImageDataset, TrainConfig], TrainedTask]


def search_settings(train_on: TrainOnSplit, train: ImageDataset, grid: SearchGrid, base: TrainConfig,
                    on_cell: Callable[[SearchCell], None] | None = None) -> SearchOutcome:
    """`train_on(fit, val, cfg)` trains on `fit` and reports its accuracy on `val` as `test_accuracy`."""
    fit, val = validation_split(train, grid.validation_fraction)

    def run(lr: float, scale: int) -> SearchCell:
        cfg = replace(base, lr=lr, epochs=scale * base.epochs_for(len(fit)))
        trained = train_on(fit, val, cfg)
        cell = SearchCell(lr, scale, cfg.epochs, trained.test_accuracy, trained.curve)
        if on_cell is not None:
            on_cell(cell)
        return cell

    cells = [run(lr, grid.epoch_scales[0]) for lr in grid.lrs]
    best_lr = max(cells, key=lambda c: _preference(c, base.lr)).lr
    cells += [run(best_lr, scale) for scale in grid.epoch_scales[1:]]
    best = max(cells, key=lambda c: _preference(c, base.lr))
    return SearchOutcome(best.lr, best.epoch_scale, len(fit), len(val), tuple(cells))


def _preference(cell: SearchCell, default_lr: float) -> tuple[float, int, float]:
    # Validation sets of 20 images tie often: a tie goes to the shorter schedule, then the lr nearest the default.
    return cell.val_accuracy, -cell.epoch_scale, -abs(math.log(cell.lr / default_lr))
