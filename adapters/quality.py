"""`mosaserve results`: the quality table of RESULTS.md, on the embedded backbone.

For every downstream task, training budget, method and seed: train on the budget's images, test
on held-out ones, record the held-out accuracy of the merged file (what is served), the trainable
parameters and the training time, beside a logistic regression on the same images' raw pixels.
Trainable parameters are matched: MoSA and the standard adapter share r (2*d*r + r + d per block),
and LoRA, on the fused qkv (d*r + r*3d = 4*d*r per block), gets rank r/2; every method, the linear
probe included, trains the same head, counted in its parameters. Seeds change the split's training
order and initialisation; the test set stays fixed per task. A task with fewer images than a budget
plus the test set trains on what it has (half of it when it is smaller than twice the test set), once.
With a search grid, each method's learning rate and schedule length are first chosen on validation
images carved out of the budget (adapters/search.py), on the first seed; every run records its
train and held-out accuracy curve.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from .backbone import BackboneInfo, BackboneSpec, load_backbone
from .config import AdapterConfig, Method
from .datasets import load_dataset
from .image_dataset import ImageDataset
from .embedded import EMBEDDED_BACKBONE
from .paired import hits_string
from .pixel_baseline import pixel_logistic_regression
from .search import FULL_GRID, SearchCell, SearchGrid, search_settings
from .task_training import TrainedTask, train_task
from .training import TrainConfig

PIXELS = "pixel logistic regression"
METHOD_ORDER = (PIXELS, "linear", "adapter", "lora", "mosa")


def rank_for(method: str, r: int) -> int:
    """LoRA's rank that gives it the trainable parameters of a bottleneck of width r."""
    return max(1, r // 2) if method == Method.LORA else r


def run_quality(tasks: tuple[str, ...], budgets: tuple[int, ...], methods: tuple[str, ...], seeds: tuple[int, ...],
                epochs: int | None, test_size: int, out: Path, spec: BackboneSpec = EMBEDDED_BACKBONE, r: int = 16,
                grid: SearchGrid | None = FULL_GRID, head: str | None = None, splits: tuple[int, ...] = (0,)) -> dict:
    """The report written to `out` (after every task and budget, so a long run keeps what it has done).
    `splits`: the seeds of the permutations that split each task into training and test images."""
    backbone, info = load_backbone(spec)
    meta = {"head": str(head or AdapterConfig().head), "backbone": info.name, "checkpoint": spec.checkpoint,
            "fingerprint": info.fingerprint, "epochs": epochs, "test_size": test_size, "splits": list(splits),
            "grid": None if grid is None else asdict(grid),
            "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads()}
    report: dict = {"meta": meta, "rows": [], "search": []}
    trainers = [MethodTrainer(backbone, info, method, rank_for(method, r), head) for method in methods]
    for task in tasks:
        data = load_dataset(task, info.input_size[-1])
        for split in splits:
            order, held_out = split_for_results(data, split, test_size)
            test = data.subset(order[-held_out:])
            for size in sorted({min(budget, len(data) - held_out) for budget in budgets}, reverse=True):
                _run_budget(report, trainers, task, data.subset(order[:size]), test, split,
                            TrainConfig(epochs=epochs), seeds, grid)
                _write(out, report)
    return report


def split_for_results(data: ImageDataset, split: int, test_size: int) -> tuple[torch.Tensor, int]:
    """One permutation per task and split: its last `held_out` images are the test set of every run,
    its first ones the training images of every budget."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(split))
    return order, min(test_size, len(data) // 2)


def _run_budget(report: dict, trainers: list["MethodTrainer"], task: str, train: ImageDataset, test: ImageDataset,
                split: int, base: TrainConfig, seeds: tuple[int, ...], grid: SearchGrid | None) -> None:
    first = len(report["rows"])
    report["rows"].append(_pixel_row(task, train, test))
    for trainer in trainers:
        _run_method(report, trainer, task, train, test, base, seeds, grid)
    for row in report["rows"][first:]:
        row["split"] = split


def _run_method(report: dict, trainer: "MethodTrainer", task: str, train: ImageDataset, test: ImageDataset,
                base: TrainConfig, seeds: tuple[int, ...], grid: SearchGrid | None) -> None:
    """The search (on the first seed) when there is a grid, then a run per seed on the whole budget."""
    outcome = None
    if grid is not None:
        on_cell = partial(_print_cell, task, len(train), trainer.method)
        outcome = search_settings(trainer, train, grid, replace(base, seed=seeds[0]), on_cell)
        report["search"].append({"task": task, "method": trainer.method, **outcome.to_dict()})
    for seed in seeds:
        cfg = replace(base, seed=seed)
        report["rows"].append(trainer.row(task, train, test, cfg if outcome is None else outcome.config_for(cfg, len(train))))


@dataclass(frozen=True)
class MethodTrainer:
    """One method at its matched rank on the backbone; called on (train, held-out, config) as the search wants."""

    backbone: torch.nn.Module
    info: BackboneInfo
    method: str
    rank: int
    head: str | None = None

    def __call__(self, train: ImageDataset, held_out: ImageDataset, cfg: TrainConfig,
                 held_out_name: str = "val") -> TrainedTask:
        return train_task(self.backbone, self.info, train, held_out, self.method, cfg, r=self.rank,
                          watch={"train": train, held_out_name: held_out}, head=self.head)

    def row(self, task: str, train: ImageDataset, test: ImageDataset, cfg: TrainConfig) -> dict:
        trained, epochs = self(train, test, cfg, "test"), cfg.epochs_for(len(train))
        print(f"{task:>8} {len(train):>5} {self.method:>8} seed {cfg.seed} (lr {cfg.lr:g}, {epochs} epochs): "
              f"{trained.test_accuracy:.2%}", flush=True)
        return {"task": task, "train_images": len(train), "test_images": len(test), "method": self.method,
                "r": self.rank, "seed": cfg.seed, "lr": cfg.lr, "epochs": epochs,
                "test_accuracy": trained.test_accuracy, "trainable_params": trained.trainable_params,
                "train_seconds": trained.train_seconds, "curve": list(trained.curve),
                "test_hits": hits_string(trained.test_hits)}


def _print_cell(task: str, size: int, method: str, cell: SearchCell) -> None:
    print(f"{task:>8} {size:>5} {method:>8} search lr {cell.lr:g}, {cell.epochs} epochs: "
          f"validation {cell.val_accuracy:.2%}", flush=True)


def _write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


def _pixel_row(task: str, train, test) -> dict:
    baseline = pixel_logistic_regression(train, test)
    print(f"{task:>8} {len(train):>5} pixels: {baseline.test_accuracy:.2%}", flush=True)
    return {"task": task, "train_images": len(train), "test_images": len(test), "method": PIXELS, "r": None,
            "seed": None, "test_accuracy": baseline.test_accuracy, "trainable_params": baseline.params,
            "train_seconds": baseline.seconds, "test_hits": hits_string(baseline.test_hits)}
