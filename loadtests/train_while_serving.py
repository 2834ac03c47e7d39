"""The train-while-serving scenario: steady load at 60% of capacity, first alone, then while a training job runs
on the same machine, from its submission to its task going live."""

from __future__ import annotations

from pathlib import Path

from .mixes import TaskMix
from .plot import plot_latency
from .report import report, summarise
from .runner import RequestRecord, Target, run_load
from .schedule import Phase, plan_arrivals, warmup
from .training_job import TrainingJob, TrainingJobSpec

LOAD_SHARE = 0.6  # of the capacity: the headroom a service normally runs with


def train_while_serving(target: Target, capacity: float, job: TrainingJobSpec, duration_s: float, train_s: float,
                        warmup_s: float, slo_s: float, mix: TaskMix, image: bytes, out_dir: Path, token: str | None,
                        seed: int = 0, allow_remote: bool = False) -> dict:
    """`duration_s` of load alone, then `train_s` of the same load with the job submitted at its start: the job
    should be live before the load ends, or its last part would have run unmeasured."""
    rate = LOAD_SHARE * capacity
    phases = warmup(rate, warmup_s) + [Phase("steady", rate, duration_s), Phase("training", rate, train_s)]
    running = TrainingJob(job, target.url, token, out_dir, start_after_s=warmup_s + duration_s).start()
    result = run_load(target, plan_arrivals(phases, mix, seed), image, allow_remote=allow_remote)
    outcome = running.outcome(timeout_s=3600)
    doc = report(result, phases, slo_s)
    steady, training = doc["phases"]["steady"], _while_training(result.requests, outcome, slo_s)
    doc.update(rate=rate, training_job=outcome, while_training=training, verdict={
        "p99_ratio": training["p99_ms"] / steady["p99_ms"] if training["p99_ms"] and steady["p99_ms"] else None,
        "client_timeouts": sum(1 for r in result.requests if r.phase != "warmup" and r.status == 0),
        "failed_requests": doc["overall"]["errors"],
        "job_live": outcome["live"],
        "live_before_load_ended": outcome["live"] and outcome["submit_to_live_s"] <= train_s,
    })
    doc["plot"] = str(plot_latency([r for r in result.requests if r.phase != "warmup"], phases[-2:], slo_s,
                                   out_dir / "latency.png", f"{job.trainer} training at {rate:.0f} req/s",
                                   start_s=warmup_s))
    return doc


def _while_training(records: list[RequestRecord], outcome: dict, slo_s: float) -> dict:
    """The requests due from the job's submission until it ended (its task live, or the job failed)."""
    start = outcome["submitted_at_s"]
    end = start + outcome.get("submit_to_live_s", float("inf"))
    inside = [r for r in records if start <= r.due_s < end]
    span = min(end, max((r.due_s for r in records), default=start)) - start
    return summarise(inside, span, slo_s)
