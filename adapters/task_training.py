"""From a dataset to a servable adapter file: split, preprocess, train, merge, evaluate the file itself.

Shared by `mosaserve train` and the training sidecar of the served application. The accuracy
reported is that of the encoded file loaded back (what will be served), on held-out images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from .backbone import BackboneInfo
from .config import AdapterConfig
from .curves import TRAIN_PROBE_IMAGES, AccuracyCurve
from .file_format import AdapterHeader, encode_adapter, load_adapter
from .image_dataset import ImageDataset, train_test_split
from .loading import build_adapted_model
from .model import AdaptedViT
from .preprocess import Preprocessor
from .train_state import TrainState
from .training import TrainConfig, hits, train_adapter


@dataclass(frozen=True)
class TrainedTask:
    file_bytes: bytes  # a complete, validated adapter file
    trainable_params: int
    train_seconds: float
    test_accuracy: float
    epoch_losses: tuple[float, ...]
    curve: tuple[dict[str, float], ...] = ()  # accuracy on the watched image sets during training
    test_hits: tuple[bool, ...] = ()  # whether each held-out image is classified right, in order


def fit_split(available: int, train_size: int, test_size: int) -> tuple[int, int]:
    """The asked split, or for a smaller dataset 80/20 of what there is."""
    if train_size + test_size <= available:
        return train_size, test_size
    test = max(1, available // 5)
    return available - test, test


def split_for_training(data: ImageDataset, train_size: int, test_size: int) -> tuple[ImageDataset, ImageDataset]:
    return train_test_split(data, *fit_split(len(data), train_size, test_size), seed=0)


def train_task(backbone: nn.Module, info: BackboneInfo, train: ImageDataset, test: ImageDataset, method: str,
               cfg: TrainConfig, progress: bool = False,
               on_epoch: Callable[[int, float], None] | None = None, resume: TrainState | None = None,
               on_checkpoint: Callable[[TrainState], None] | None = None, r: int | None = None,
               watch: dict[str, ImageDataset] | None = None, head: str | None = None) -> TrainedTask:
    """`resume` and `on_checkpoint` as in `train_adapter`: a run stopped at an epoch end continues exactly.
    `r`: bottleneck width or LoRA rank (default: AdapterConfig's). `watch`: image sets whose accuracy is
    recorded during training (`TrainedTask.curve`; "train" names the training images themselves). `head`:
    what the head reads (default: AdapterConfig's)."""
    prep = Preprocessor(info)
    chosen = {name: value for name, value in (("r", r), ("head", head)) if value is not None}
    config = AdapterConfig(method=method, **chosen)
    model = AdaptedViT(copy.deepcopy(backbone), config, len(train.class_names), seed=cfg.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    images = prep(train.images)
    curve = _curve(model, prep, images, train.labels, watch or {}, cfg.epochs_for(len(train)))
    result = train_adapter(model, images, train.labels, cfg, progress=progress,
                           on_epoch=_both(curve, on_epoch) if watch else on_epoch,
                           resume=resume, on_checkpoint=on_checkpoint)
    provenance = {"dataset": train.name, "train_images": len(train), "epochs": cfg.epochs_for(len(train)), "seed": cfg.seed}
    file_bytes = encode_adapter(AdapterHeader(config, info, train.class_names, provenance), model.export_tensors())
    served = build_adapted_model(copy.deepcopy(backbone), info, load_adapter(file_bytes, info.fingerprint))
    right = hits(served, prep(test.images), test.labels)
    return TrainedTask(file_bytes, trainable, result.seconds, float(right.float().mean()), tuple(result.epoch_losses),
                       tuple(curve.points), tuple(right.tolist()))


def _curve(model: AdaptedViT, prep: Preprocessor, images: Tensor, labels: Tensor, watch: dict[str, ImageDataset],
           epochs: int) -> AccuracyCurve:
    probes = {name: (images[:TRAIN_PROBE_IMAGES], labels[:TRAIN_PROBE_IMAGES]) if name == "train"
              else (prep(data.images), data.labels) for name, data in watch.items()}
    return AccuracyCurve(model, probes, epochs)


def _both(first: Callable[[int, float], None], second: Callable[[int, float], None] | None) -> Callable[[int, float], None]:
    def call(epoch: int, loss: float) -> None:
        first(epoch, loss)
        if second is not None:
            second(epoch, loss)
    return call
