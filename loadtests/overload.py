"""The overload scenario: open-loop load at multiples of the capacity a sweep found, then a burst and its recovery.

Every request carries the objective as its deadline (X-Request-Timeout-Ms), as a client with an objective
would. A service that sheds well keeps its goodput at capacity however much more it is sent, refuses the
rest at once (503) or at its deadline (504), and never answers after the deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .mixes import TaskMix
from .plot import plot_latency
from .report import milliseconds, percentile, report
from .runner import RequestRecord, Target, run_load
from .schedule import Phase, plan_arrivals, warmup

FACTORS = (0.5, 1.0, 1.5, 2.0, 3.0)
SHED_STATUSES = (503, 504)


@dataclass(frozen=True)
class Burst:
    factor: float = 3.0
    seconds: float = 10.0
    calm_factor: float = 0.5  # before and after the burst
    calm_s: float = 10.0


def overload_levels(target: Target, capacity: float, duration_s: float, warmup_s: float, slo_s: float, mix: TaskMix,
                    image: bytes, out_dir: Path, seed: int = 0, allow_remote: bool = False) -> dict:
    """One open-loop run per multiple of `capacity`; each level's goodput set against the 1x level's."""
    levels = {}
    for factor in FACTORS:
        rate = factor * capacity
        phases = warmup(rate, warmup_s) + [Phase("load", rate, duration_s)]
        result = run_load(target, plan_arrivals(phases, mix, seed), image, allow_remote=allow_remote)
        summary = report(result, phases, slo_s)["overall"]
        measured = [r for r in result.requests if r.phase == "load"]
        levels[f"{factor:g}x"] = {**summary, **shedding(measured, slo_s), "rate": rate}
        plot_latency(measured, phases[-1:], slo_s, out_dir / f"latency-{factor:g}x.png",
                     f"overload {factor:g}x capacity", start_s=warmup_s)
    at_capacity = levels["1x"]["goodput_rps"]
    for level in levels.values():
        level["goodput_vs_capacity"] = level["goodput_rps"] / at_capacity if at_capacity else None
    return levels


def shedding(records: list[RequestRecord], slo_s: float) -> dict:
    """What was refused or timed out, how fast the refusals came, and any answer sent after its deadline."""
    shed = [r.latency_s for r in records if r.status in SHED_STATUSES]
    return {"shed": len(shed), "shed_p99_ms": milliseconds(percentile(shed, 99)),
            "client_timeouts": sum(1 for r in records if r.status == 0),
            "answers_after_deadline": sum(1 for r in records if r.ok and r.latency_s > slo_s)}


def burst_recovery(target: Target, capacity: float, burst: Burst, slo_s: float, mix: TaskMix, image: bytes,
                   out_dir: Path, seed: int = 0, allow_remote: bool = False) -> dict:
    """Calm, a burst, calm again: how long after the burst ends every request is answered within the objective."""
    calm = burst.calm_factor * capacity
    phases = [Phase("before", calm, burst.calm_s), Phase("burst", burst.factor * capacity, burst.seconds),
              Phase("after", calm, burst.calm_s)]
    result = run_load(target, plan_arrivals(phases, mix, seed), image, allow_remote=allow_remote)
    doc = report(result, phases, slo_s)
    ended = burst.calm_s + burst.seconds
    missed = [r.due_s - ended for r in result.requests if r.phase == "after" and not (r.ok and r.latency_s <= slo_s)]
    plot_latency(result.requests, phases, slo_s, out_dir / "latency-burst.png", f"burst at {burst.factor:g}x capacity")
    return {"phases": doc["phases"], "burst": shedding([r for r in result.requests if r.phase == "burst"], slo_s),
            # from the burst's end to the last request that missed the objective (0: none after the burst did)
            "recovery_s": round(max(missed, default=0.0), 2)}
