"""Open-loop arrival schedules: when each request is due, fixed in advance.

The generator sends every request at its due time whether or not earlier ones have answered
(constant arrival rate), and latency is measured from the due time. A closed loop, or latency
measured from the actual send, would let a slow server slow the load down and hide its tail
(coordinated omission).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .mixes import TaskMix

MAX_REQUESTS = 200_000  # one run's bound, whatever the rate and duration asked for


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float  # requests per second
    duration_s: float
    measured: bool = True  # False for warm-up: sent, but left out of the summaries

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.duration_s <= 0:
            raise ValueError(f"phase {self.name!r}: rate and duration must be positive")


def warmup(rate: float, seconds: float) -> list[Phase]:
    """A warm-up phase at `rate`, sent first and left out of the report; none for 0 seconds."""
    return [Phase("warmup", rate, seconds, measured=False)] if seconds > 0 else []


@dataclass(frozen=True)
class Arrival:
    due_s: float  # from the start of the run
    task: str
    phase: str


def plan_arrivals(phases: list[Phase], mix: TaskMix, seed: int = 0) -> list[Arrival]:
    """Evenly spaced arrivals at each phase's rate, phases back to back, tasks drawn from the mix."""
    total = sum(round(p.rate * p.duration_s) for p in phases)
    if total > MAX_REQUESTS:
        raise ValueError(f"{total} requests planned; one run is bounded to {MAX_REQUESTS}")
    tasks = iter(mix.draw(random.Random(seed), total))
    arrivals, start = [], 0.0
    for phase in phases:
        count = round(phase.rate * phase.duration_s)
        arrivals += [Arrival(start + i / phase.rate, next(tasks), phase.name) for i in range(count)]
        start += phase.duration_s
    return arrivals


def plan_duration(phases: list[Phase]) -> float:
    return sum(p.duration_s for p in phases)
