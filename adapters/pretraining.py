"""Pretraining the embedded default backbone: a small ViT trained from scratch with labels.

No pretrained weights can be downloaded here, so the project makes its own: the demo ViT
(vit_tiny layout at 28 px, patch 4, 6 blocks) trained on Animal-MNIST (10,000 animal silhouettes)
with generated formula classes beside them in every batch (stroke glyphs, glyphs.py; shaded blobs,
shaded.py). The downstream tasks (MNIST, scikit-learn digits, LFW faces) are in none of it, so
adapter results on them measure transfer. The classifier head is dropped and the weights are
stored in float16 (about 5 MB) as `adapters/weights/default_backbone.safetensors` (see embedded.py).
Rebuild: `pip install --no-deps animal-mnist==0.4 && mosaserve pretrain-backbone`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor

from .augment import random_shift
from .backbone import BackboneSpec, build_model, describe
from .glyphs import GlyphClasses
from .image_dataset import ImageDataset, train_test_split
from .preprocess import Preprocessor
from .shaded import ShadedClasses
from .training import accuracy, warmup_cosine



@dataclass(frozen=True)
class PretrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    max_shift: int = 3  # pixels of random translation
    val_size: int = 1000
    seed: int = 0
    device: str = "cpu"  # "cuda" for a larger run where a GPU is lent
    glyph_classes: int = 1000  # procedural stroke-glyph classes (glyphs.py) trained beside the data's; 0: none
    glyphs_per_batch: int = 64  # glyph images added to each batch of the data's images
    shaded_classes: int = 0  # procedural shaded-blob classes (shaded.py) trained beside; 0: none
    shaded_per_batch: int = 32  # shaded-blob images added to each batch


@dataclass(frozen=True)
class FormulaStream:
    """Generated classes trained beside the data's: their labels start at `first_label`."""

    name: str
    classes: GlyphClasses | ShadedClasses
    per_batch: int
    first_label: int

    def append_to(self, images: Tensor, labels: Tensor, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The batch with `count` fresh generated images appended."""
        drawn = torch.randint(0, self.classes.num_classes, (count,), generator=generator)
        rendered = self.classes.render(drawn, generator).expand(-1, images.shape[1], -1, -1)
        return torch.cat([images, rendered]), torch.cat([labels, drawn + self.first_label])


def formula_streams(cfg: PretrainConfig, data_classes: int, size: int) -> list[FormulaStream]:
    streams, first = [], data_classes
    for name, family, classes, per_batch in (("glyph", GlyphClasses, cfg.glyph_classes, cfg.glyphs_per_batch),
                                             ("shaded", ShadedClasses, cfg.shaded_classes, cfg.shaded_per_batch)):
        if classes:
            streams.append(FormulaStream(name, family(classes, seed=cfg.seed, size=size), per_batch, first))
            first += classes
    return streams


@dataclass(frozen=True)
class PretrainResult:
    val_accuracy: float
    seconds: float
    history: list[dict]


def augment(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Random translation (zero padding) and horizontal flip of uint8 images (N, C, H, W)."""
    shifted = random_shift(images, max_shift, generator, mode="constant")
    flip = torch.rand(len(images), generator=generator) < 0.5
    shifted[flip] = shifted[flip].flip(-1)
    return shifted


def pretrain(spec: BackboneSpec, data: ImageDataset, cfg: PretrainConfig,
             on_epoch: Callable[[dict], None] | None = None) -> tuple[torch.nn.Module, PretrainResult]:
    """Trains `spec`'s ViT with a classifier on `data`; returns the backbone (no head) and the result."""
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    streams = formula_streams(cfg, len(data.class_names), data.images.shape[-1])
    model.reset_classifier(len(data.class_names) + sum(stream.classes.num_classes for stream in streams))
    prep = Preprocessor(describe(model, spec))
    model.to(cfg.device)
    train, val = train_test_split(data, len(data) - cfg.val_size, cfg.val_size, seed=cfg.seed)
    val_x, val_y = prep(val.images).to(cfg.device), val.labels.to(cfg.device)
    held_out = {}  # a fixed set of generated images per stream, which no batch draws
    for stream in streams:
        images, labels = stream.append_to(val.images[:0], val.labels[:0], cfg.val_size,
                                          torch.Generator().manual_seed(cfg.seed + 1))
        held_out[stream.name] = (prep(images).to(cfg.device), labels.to(cfg.device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(cfg.seed)
    began, history = time.perf_counter(), []
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        total = 0.0
        for start in range(0, len(train), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            images, labels = augment(train.images[rows], cfg.max_shift, generator), train.labels[rows]
            for stream in streams:
                images, labels = stream.append_to(images, labels, stream.per_batch, generator)
            x = prep(images).to(cfg.device)
            loss = F.cross_entropy(model(x), labels.to(cfg.device), label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(rows)
        with torch.inference_mode():
            val_acc = accuracy(model, val_x, val_y)
            generated = {f"{name}_val_accuracy": accuracy(model, *images) for name, images in held_out.items()}
        history.append({"epoch": epoch + 1, "loss": total / len(train), "val_accuracy": val_acc, **generated,
                        "seconds": time.perf_counter() - began})
        if on_epoch is not None:
            on_epoch(history[-1])
    backbone = copy.deepcopy(model).to("cpu")
    backbone.reset_classifier(0)
    return backbone.eval(), PretrainResult(history[-1]["val_accuracy"], time.perf_counter() - began, history)


def save_embedded(backbone: torch.nn.Module, path: Path, spec: BackboneSpec, cfg: PretrainConfig,
                  result: PretrainResult) -> Path:
    """Writes float16 weights with a metadata record of how they were made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in backbone.state_dict().items()}
    data = "animal-mnist 0.4 (PyPI), 10 animal classes"
    if cfg.glyph_classes:
        data += f"; {cfg.glyph_classes} procedural stroke-glyph classes, {cfg.glyphs_per_batch} glyphs per batch"
    if cfg.shaded_classes:
        data += f"; {cfg.shaded_classes} procedural shaded-blob classes, {cfg.shaded_per_batch} per batch"
    meta = {"model": spec.name, "kwargs": repr(spec.kwargs), "data": data,
            "config": repr(asdict(cfg)), "val_accuracy": f"{result.val_accuracy:.4f}"}
    save_file(state, str(path), metadata=meta)
    return path
