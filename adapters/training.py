"""Training one task's adapter on a frozen backbone: AdamW, warm-up then cosine, MoSA's extra loss."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .errors import AdapterConfigError
from .model import AdaptedViT
from .optim import ExpertAdamW

OPTIMIZERS = ("expert-adamw", "adamw")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults follow the official MoSA scripts (AdamW eps 1e-6, wd 0.01, warm-up + cosine, seed 3407)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    seed: int = 3407
    label_smoothing: float = 0.0
    # "expert-adamw" steps split tensors exactly as K separate expert copies; "adamw" is torch's
    # dense AdamW (see adapters/optim.py for where the two differ).
    optimizer: str = "expert-adamw"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise AdapterConfigError("epochs and batch_size must be positive")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise AdapterConfigError("lr must be positive; weight_decay and warmup_epochs non-negative")
        if self.optimizer not in OPTIMIZERS:
            raise AdapterConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")


@dataclass
class TrainResult:
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def parameter_groups(model: AdaptedViT, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases and LayerNorm parameters are not decayed."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: AdaptedViT, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay)
    if cfg.optimizer == "expert-adamw":
        return ExpertAdamW(groups, model.expert_splits(), lr=cfg.lr, eps=1e-6)
    return torch.optim.AdamW(groups, lr=cfg.lr, eps=1e-6)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def symmetric_kl(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """0.5 * [KL(p_b || p_a) + KL(p_a || p_b)], each target detached (the R-Drop form MoSA uses)."""
    log_a, log_b = F.log_softmax(logits_a, dim=-1), F.log_softmax(logits_b, dim=-1)
    kl_ab = F.kl_div(log_a, log_b.detach(), reduction="batchmean", log_target=True)
    kl_ba = F.kl_div(log_b, log_a.detach(), reduction="batchmean", log_target=True)
    return 0.5 * (kl_ab + kl_ba)


def task_loss(model: AdaptedViT, images: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
    """Cross-entropy; for MoSA with a consistency weight, plus the symmetric KL of a second draw."""
    logits = model(images)
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    weight = model.config.consistency_weight
    if model.config.method == "mosa" and weight > 0:
        loss = loss + weight * symmetric_kl(logits, model(images))
    return loss


def train_adapter(
    model: AdaptedViT,
    images: Tensor,
    labels: Tensor,
    cfg: TrainConfig,
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Trains the model's adapter and head on preprocessed images (float, N x 3 x H x W)."""
    torch.manual_seed(cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(labels) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    result, start = TrainResult(), time.perf_counter()
    model.train()
    bar = tqdm(total=total, disable=not progress, desc=f"train {model.config.method}", unit="step")
    for epoch in range(cfg.epochs):
        order, running = torch.randperm(len(labels), generator=shuffle), 0.0
        for first in range(0, len(labels), cfg.batch_size):
            batch = order[first : first + cfg.batch_size]
            loss = task_loss(model, images[batch], labels[batch], cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running += loss.item() * len(batch)
            result.steps += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        result.epoch_losses.append(running / len(labels))
        if on_epoch is not None:
            on_epoch(epoch, result.epoch_losses[-1])
    bar.close()
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


@torch.inference_mode()
def predict(model: torch.nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def accuracy(model: torch.nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    return float((predict(model, images, batch_size).argmax(dim=-1) == labels).float().mean())
