"""A training run's settings, the one place their defaults live; free of torch, so the command line can
show them without loading it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import AdapterConfigError

# "expert-adamw" steps split tensors as the official K expert copies are stepped (a copy drawn once is
# stepped at every later step, with a zero gradient when undrawn); "expert-adamw-skip" steps only the
# experts drawn in the step; "adamw" is torch's dense AdamW (adapters/optim.py says where they differ).
OPTIMIZERS = ("expert-adamw", "expert-adamw-skip", "adamw")
DEFAULT_EPOCHS = 10


@dataclass(frozen=True)
class TrainConfig:
    """Defaults follow the official MoSA scripts (AdamW eps 1e-6, wd 0.01, warm-up + cosine, seed 3407)."""

    epochs: int | None = None  # None: DEFAULT_EPOCHS, or more for a small dataset to take `min_steps` steps
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 0.01
    warmup_epochs: float = 1.0
    seed: int = 3407
    label_smoothing: float = 0.0
    max_shift: int = 2  # random translation of each training image by up to this many pixels
    # Random rotation (degrees) and zoom (1 +- max_scale): with 400 least steps they gained on validation at
    # every task and budget, most at 100 images (RESULTS.md); both 0 leaves whole-pixel shifts alone.
    max_rotation: float = 10.0
    max_scale: float = 0.1
    # The default schedule's least number of steps: 10 epochs of 100 images at batch 64 are only 20.
    min_steps: int = 400
    optimizer: str = "expert-adamw"  # one of OPTIMIZERS

    def __post_init__(self) -> None:
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise AdapterConfigError("epochs and batch_size must be positive")
        if self.lr <= 0 or min(self.weight_decay, self.warmup_epochs, self.max_shift, self.min_steps) < 0:
            raise AdapterConfigError("lr must be positive; weight_decay, warmup_epochs, max_shift and min_steps "
                                     "non-negative")
        if not (0 <= self.max_rotation <= 180 and 0 <= self.max_scale < 1):
            raise AdapterConfigError("max_rotation must lie in [0, 180] degrees and max_scale in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            raise AdapterConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")

    def epochs_for(self, examples: int) -> int:
        """The epochs a run over `examples` images takes: `epochs` as given, else the default schedule."""
        if self.epochs is not None:
            return self.epochs
        return max(DEFAULT_EPOCHS, math.ceil(self.min_steps / math.ceil(examples / self.batch_size)))


TRAIN_DEFAULTS = TrainConfig()  # read by the command line and the training API for their own defaults
