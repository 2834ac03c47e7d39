"""`mosaserve results`: the quality table of RESULTS.md, on the embedded backbone.

For every downstream task, training budget, method and seed: train on the budget's images, test
on held-out ones, record the held-out accuracy of the merged file (what is served), the trainable
parameters and the training time, beside a logistic regression on the same images' raw pixels.
Trainable parameters are matched: MoSA and the standard adapter share r (2*d*r + r + d per block),
and LoRA, on the fused qkv (d*r + r*3d = 4*d*r per block), gets rank r/2; every method, the linear
probe included, trains the same head, counted in its parameters. Seeds change the split's training
order and initialisation; the test set stays fixed per task. A task with fewer images than a budget plus the test set trains on what it has (half of it
when it is smaller than twice the test set), once.
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import torch

from .backbone import BackboneSpec, load_backbone
from .datasets import load_dataset
from .embedded import EMBEDDED_BACKBONE
from .pixel_baseline import pixel_logistic_regression
from .task_training import train_task
from .training import TrainConfig

PIXELS = "pixel logistic regression"
METHOD_ORDER = (PIXELS, "linear", "adapter", "lora", "mosa")


def rank_for(method: str, r: int) -> int:
    """LoRA's rank that gives it the trainable parameters of a bottleneck of width r."""
    return max(1, r // 2) if method == "lora" else r


def run_quality(tasks: tuple[str, ...], budgets: tuple[int, ...], methods: tuple[str, ...], seeds: tuple[int, ...],
                epochs: int | None, test_size: int, out: Path, spec: BackboneSpec = EMBEDDED_BACKBONE, r: int = 16) -> list[dict]:
    backbone, info = load_backbone(spec)
    rows = []
    for task in tasks:
        data = load_dataset(task, info.input_size[-1])
        # One seed-0 permutation per task: the last images are the test set of every run.
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        held_out = min(test_size, len(data) // 2)
        test = data.subset(order[-held_out:])
        for size in sorted({min(budget, len(data) - held_out) for budget in budgets}, reverse=True):
            train = data.subset(order[:size])
            rows.append(_pixel_row(task, train, test))
            for method in methods:
                rank = rank_for(method, r)
                for seed in seeds:
                    cfg = TrainConfig(epochs=epochs, seed=seed)
                    trained = train_task(backbone, info, train, test, method, cfg, r=rank)
                    rows.append({"task": task, "train_images": len(train), "test_images": held_out, "method": method,
                                 "r": rank, "seed": seed, "epochs": cfg.epochs_for(len(train)),
                                 "test_accuracy": trained.test_accuracy, "trainable_params": trained.trainable_params, "train_seconds": trained.train_seconds})
                    print(f"{task:>8} {len(train):>5} {method:>8} seed {seed}: {trained.test_accuracy:.2%}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"backbone": info.name, "checkpoint": spec.checkpoint, "fingerprint": info.fingerprint, "epochs": epochs,
            "test_size": test_size,
            "torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows


def _pixel_row(task: str, train, test) -> dict:
    baseline = pixel_logistic_regression(train, test)
    print(f"{task:>8} {len(train):>5} pixels: {baseline.test_accuracy:.2%}", flush=True)
    return {"task": task, "train_images": len(train), "test_images": len(test), "method": PIXELS, "r": None,
            "seed": None, "test_accuracy": baseline.test_accuracy, "trainable_params": baseline.params,
            "train_seconds": baseline.seconds}


def format_quality(rows: list[dict]) -> str:
    lines = ["| task | train images | method | r | trainable params | test accuracy % (mean ± sd over seeds) | train s (mean) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    keys = sorted({(r["task"], r["train_images"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    for task, size in keys:
        for method in METHOD_ORDER:
            runs = [r for r in rows if (r["task"], r["train_images"], r["method"]) == (task, size, method)]
            if not runs:
                continue
            accs = [r["test_accuracy"] * 100 for r in runs]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            r = "-" if method in ("linear", PIXELS) else runs[0].get("r", "-")
            lines.append(f"| {task} | {size} | {method} | {r} | {runs[0]['trainable_params']:,} | "
                         f"{statistics.mean(accs):.1f} ± {spread:.1f} (n={len(accs)}) | "
                         f"{statistics.mean(r['train_seconds'] for r in runs):.1f} |")
    return "\n".join(lines)
