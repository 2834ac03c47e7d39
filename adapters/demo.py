"""The adapter demo: train a standard adapter and MoSA on a real built-in dataset, merge, save, reload.

The backbone is the embedded default (a small ViT the project pretrained on animal silhouettes, not
on digits); it is written next to the adapters so they can be served later.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path


from .backbone import BackboneSpec, load_backbone, save_backbone
from .config import AdapterConfig
from .datasets import load_dataset, train_test_split
from .embedded import EMBEDDED_BACKBONE
from .file_format import AdapterHeader, load_adapter, save_adapter
from .loading import build_adapted_model
from .model import AdaptedViT
from .preprocess import Preprocessor
from .training import TrainConfig, accuracy, train_adapter

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
    train_cfg: TrainConfig = TrainConfig(epochs=10),
    progress: bool = True,
    backbone_spec: BackboneSpec = DEMO_BACKBONE,
) -> list[DemoRow]:
    """Trains each method on `dataset` (a built-in name, folder:PATH or list:PATH) and writes its file."""
    backbone, info = load_backbone(backbone_spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_backbone(backbone, out_dir / "backbone.safetensors")
    data = load_dataset(dataset, info.input_size[-1])
    train_size, test_size = fit_split(len(data), train_size, test_size)
    train, test = train_test_split(data, train_size, test_size, seed=0)
    prep = Preprocessor(info)
    train_x, test_x = prep(train.images), prep(test.images)
    rows = []
    for method in methods:
        config = AdapterConfig(method=method)
        model = AdaptedViT(copy.deepcopy(backbone), config, len(data.class_names), seed=train_cfg.seed)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result = train_adapter(model, train_x, train.labels, train_cfg, progress=progress)
        header = AdapterHeader(config, info, data.class_names, {"dataset": dataset, "train_images": train_size,
                                                               "epochs": train_cfg.epochs, "seed": train_cfg.seed})
        path = save_adapter(out_dir / f"{data.name}-{method}.safetensors", header, model.export_tensors())
        # Evaluate what was written: the merged adapter as loaded back from its file.
        served = build_adapted_model(copy.deepcopy(backbone), info, load_adapter(path, info.fingerprint))
        rows.append(DemoRow(method, trainable, result.seconds, accuracy(served, test_x, test.labels), path))
    return rows


def fit_split(available: int, train_size: int, test_size: int) -> tuple[int, int]:
    """The asked split, or for a smaller dataset 80/20 of what there is."""
    if train_size + test_size <= available:
        return train_size, test_size
    test = max(1, available // 5)
    return available - test, test


def format_rows(rows: list[DemoRow]) -> str:
    lines = [f"{'method':<10} {'trainable':>10} {'train s':>8} {'test acc':>9}  file"]
    for row in rows:
        lines.append(f"{row.method:<10} {row.trainable_params:>10,} {row.train_seconds:>8.1f} "
                     f"{row.test_accuracy:>9.2%}  {row.file}")
    return "\n".join(lines)
