"""Task mixes: which task each request of a load test asks for.

A mix is a list of task ids with weights; requests draw from it with a seeded generator, so a
run is reproducible. Zipf weights follow 1 / rank**s (rank 1 is the hottest task), the usual
model of a few popular tasks and a long tail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BACKBONE_TASK = "__backbone__"  # the service's name for the bare backbone (no adapter)
MIX_KINDS = ("uniform", "zipf", "single", "backbone")


@dataclass(frozen=True)
class TaskMix:
    kind: str
    tasks: tuple[str, ...]
    weights: tuple[float, ...]

    def draw(self, rng: random.Random, count: int) -> list[str]:
        return rng.choices(self.tasks, weights=self.weights, k=count)

    def describe(self) -> str:
        return f"{self.kind} over {len(self.tasks)} task{'s' if len(self.tasks) != 1 else ''}"


def make_mix(kind: str, tasks: list[str] | tuple[str, ...], zipf_s: float = 1.1) -> TaskMix:
    if kind == "backbone":
        return TaskMix(kind, (BACKBONE_TASK,), (1.0,))
    if kind not in MIX_KINDS:
        raise ValueError(f"unknown task mix {kind!r}: use one of {', '.join(MIX_KINDS)}")
    if not tasks:
        raise ValueError(f"a {kind} mix needs at least one task")
    if kind == "single":
        return TaskMix(kind, (tasks[0],), (1.0,))
    if kind == "uniform":
        return TaskMix(kind, tuple(tasks), (1.0,) * len(tasks))
    if zipf_s <= 0:
        raise ValueError(f"the Zipf exponent must be positive, got {zipf_s}")
    weights = tuple(1.0 / rank**zipf_s for rank in range(1, len(tasks) + 1))
    total = sum(weights)
    return TaskMix(kind, tuple(tasks), tuple(w / total for w in weights))
