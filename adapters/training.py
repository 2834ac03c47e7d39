"""Training one task's adapter on a frozen backbone: AdamW, warm-up then cosine, MoSA's extra loss; resumable."""

from __future__ import annotations

import math
import time
from functools import partial
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .augment import random_affine
from .config import Method
from .model import AdaptedViT
from .optim import ExpertAdamW
from .train_config import TrainConfig
from .train_state import TrainState, capture_train_state, restore_train_state


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
    if cfg.optimizer.startswith("expert-adamw"):
        undrawn = "skip" if cfg.optimizer == "expert-adamw-skip" else "step"
        return ExpertAdamW(groups, model.expert_splits(), lr=cfg.lr, eps=1e-6, undrawn=undrawn)
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
    if model.config.method is Method.MOSA and weight > 0:
        loss = loss + weight * symmetric_kl(logits, model(images))
    return loss


def run_identity(model: AdaptedViT, cfg: TrainConfig, examples: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run."""
    return {"train_config": asdict(cfg), "adapter_config": model.config.to_dict(), "examples": examples,
            "epochs": cfg.epochs_for(examples)}


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_adapter(
    model: AdaptedViT,
    images: Tensor,
    labels: Tensor,
    cfg: TrainConfig,
    progress: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
    resume: TrainState | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
) -> TrainResult:
    """Trains the model's adapter and head on preprocessed images (float, N x 3 x H x W).

    `resume` continues a run from a checkpoint of it (same configs and data, a freshly built model)
    exactly as if it had not stopped; `on_checkpoint` receives such a checkpoint at every epoch
    end, before `on_epoch` (so a callback that stops the run still leaves the epoch saved).
    """
    run = run_identity(model, cfg, len(labels))
    optimizer, shuffle = build_optimizer(model, cfg), torch.Generator()
    if resume is None:
        torch.manual_seed(cfg.seed)
        shuffle.manual_seed(cfg.seed)
        result = TrainResult()
    else:
        restore_train_state(resume, model, optimizer, shuffle, run)
        result = TrainResult(list(resume.epoch_losses), 0.0, resume.steps)
    steps_per_epoch, epochs = math.ceil(len(labels) / cfg.batch_size), cfg.epochs_for(len(labels))
    total, warmup = epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=total, initial=result.steps, disable=not progress, desc=f"train {model.config.method}",
               unit="step")
    # The schedule is a pure function of the global step, so a resumed run needs only the step count.
    lr_factor = partial(warmup_cosine, total_steps=total, warmup_steps=warmup)
    for epoch in range(len(result.epoch_losses), epochs):
        order = torch.randperm(len(labels), generator=shuffle)
        loss = _train_epoch(model, optimizer, images, labels, order, cfg, result, lr_factor, bar, shuffle)
        result.epoch_losses.append(loss)
        if on_checkpoint is not None:
            on_checkpoint(capture_train_state(model, optimizer, shuffle, result.epoch_losses, result.steps, run))
        if on_epoch is not None:
            on_epoch(epoch, loss)
    bar.close()
    model.eval()
    result.seconds = time.perf_counter() - start
    return result


def _train_epoch(model: AdaptedViT, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor, order: Tensor,
                 cfg: TrainConfig, result: TrainResult, lr_factor: Callable[[int], float], bar: tqdm,
                 shuffle: torch.Generator) -> float:
    """One pass over `order`; returns the epoch's mean loss. The learning rate is a function of the global step.
    Warps are drawn from the batch-order generator, which a checkpoint keeps."""
    running = 0.0
    for first in range(0, len(labels), cfg.batch_size):
        batch = order[first : first + cfg.batch_size]
        warped = random_affine(images[batch], cfg.max_shift, cfg.max_rotation, cfg.max_scale, shuffle)
        loss = task_loss(model, warped, labels[batch], cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        set_learning_rate(optimizer, cfg.lr * lr_factor(result.steps))
        optimizer.step()
        running += loss.item() * len(batch)
        result.steps += 1
        bar.update(1)
        bar.set_postfix(epoch=len(result.epoch_losses) + 1, loss=f"{loss.item():.3f}")
    return running / len(labels)


@torch.inference_mode()
def predict(model: torch.nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    model.eval()
    return torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def hits(model: torch.nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
    """Whether each image's top class is its label."""
    return predict(model, images, batch_size).argmax(dim=-1) == labels


def accuracy(model: torch.nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    return float(hits(model, images, labels, batch_size).float().mean())
