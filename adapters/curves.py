"""Accuracy over a training run: whether a method underfits or overfits is read off these curves.

Evaluation runs in eval mode (MoSA's experts averaged, as the merged file serves them) and draws no
random numbers, so a run that records a curve trains exactly as one that does not.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .training import accuracy

CURVE_POINTS = 8  # at most this many evaluations a run: a 100-epoch run is not evaluated 100 times
TRAIN_PROBE_IMAGES = 200  # training accuracy is read on the first images of the training set, unshifted


class AccuracyCurve:
    """An `on_epoch` callback: every few epochs and at the last, the accuracy on each named image set."""

    def __init__(self, model: torch.nn.Module, probes: dict[str, tuple[Tensor, Tensor]], epochs: int) -> None:
        self.model, self.probes, self.epochs = model, probes, epochs
        self.every = math.ceil(epochs / CURVE_POINTS)
        self.points: list[dict[str, float]] = []

    def __call__(self, epoch: int, loss: float) -> None:
        done = epoch + 1
        if done % self.every and done != self.epochs:
            return
        point = {"epoch": done, "loss": round(loss, 5)}
        for name, (images, labels) in self.probes.items():
            point[f"{name}_accuracy"] = round(accuracy(self.model, images, labels), 5)
        self.model.train()  # `accuracy` leaves the model in eval mode; training continues
        self.points.append(point)
