"""The adapter demo: train a standard adapter and MoSA on a real built-in dataset, merge, save, reload.

The backbone is the embedded default (a small ViT the project pretrained on animal silhouettes, not
on digits); it is written next to the adapters so they can be served later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .atomic_write import write_atomically
from .backbone import BackboneSpec, load_backbone, save_backbone
from .datasets import load_dataset
from .embedded import EMBEDDED_BACKBONE
from .task_training import split_for_training, train_task
from .training import TrainConfig

DEMO_BACKBONE = EMBEDDED_BACKBONE  # pretrained by the project on animal silhouettes (adapters/embedded.py)


@dataclass(frozen=True)
class DemoRow:
    method: str
    trainable_params: int
    train_seconds: float
    test_accuracy: float
    file: Path


def run_demo(
    out_dir: Path,
    methods: tuple[str, ...] = ("adapter", "mosa"),
    dataset: str = "mnist",
    train_size: int = 1000,
    test_size: int = 1000,
    train_cfg: TrainConfig = TrainConfig(),
    progress: bool = True,
    backbone_spec: BackboneSpec = DEMO_BACKBONE,
    head: str | None = None,
) -> list[DemoRow]:
    """Trains each method on `dataset` (a built-in name, folder:PATH or list:PATH) and writes its file."""
    backbone, info = load_backbone(backbone_spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_backbone(backbone, out_dir / "backbone.safetensors")
    data = load_dataset(dataset, info.input_size[-1])
    train, test = split_for_training(data, train_size, test_size)
    rows = []
    for method in methods:
        task = train_task(backbone, info, train, test, method, train_cfg, progress, head=head)
        path = write_atomically(out_dir / f"{data.name}-{method}.safetensors", task.file_bytes)
        rows.append(DemoRow(method, task.trainable_params, task.train_seconds, task.test_accuracy, path))
    return rows


def format_rows(rows: list[DemoRow]) -> str:
    lines = [f"{'method':<10} {'trainable':>10} {'train s':>8} {'test acc':>9}  file"]
    for row in rows:
        lines.append(f"{row.method:<10} {row.trainable_params:>10,} {row.train_seconds:>8.1f} "
                     f"{row.test_accuracy:>9.2%}  {row.file}")
    return "\n".join(lines)
