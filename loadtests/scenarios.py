"""Load-test scenarios: steady rate, rate sweep to the SLO, burst, registrations under load, soak, overload
(multiples of the capacity a sweep finds), training beside serving, and several tasks per image.

Each scenario is a list of phases (see schedule.py), optionally with admin uploads during one of
them; `run_scenario` sends it, and writes the report (JSON), its table and a latency plot (PNG).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .mixes import TaskMix
from .multi_task import compare_multi_task, format_multi_task
from .overload import Burst, burst_recovery, overload_levels
from .plot import plot_latency
from .metrics_sampler import MemorySampler, memory_drift
from .report import format_report, format_rows, meets_slo, report, summarise
from .runner import Registration, Target, require_loopback, run_load
from .schedule import Phase, plan_arrivals, warmup
from .train_while_serving import train_while_serving
from .training_job import TrainingJobSpec

SCENARIOS = ("steady", "sweep", "burst", "registrations", "soak", "overload", "train-while-serving", "multi-task")
LEVEL_FIELDS = ("rate", "requests", "goodput_rps", "goodput_vs_capacity", "shed", "shed_p99_ms", "p99_ms",
                "answers_after_deadline", "client_timeouts")
WINDOW_FIELDS = ("requests", "errors", "p50_ms", "p99_ms")  # what a soak compares across its windows


@dataclass(frozen=True)
class LoadSpec:
    rate: float  # requests per second (the base rate for burst and registrations)
    duration_s: float  # measured seconds (per rate in a sweep)
    slo_s: float = 0.5
    warmup_s: float = 2.0
    seed: int = 0
    burst_factor: float = 3.0
    burst_s: float = 3.0
    sweep_rates: tuple[float, ...] = ()
    registrations: int = 20  # uploads in the registrations scenario (per round)
    # registrations: this many steady / upload-burst pairs back to back; each phase's p99 pools its rounds,
    # so it rests on more than one short phase's handful of requests
    rounds: int = 1
    upload_prefix: str = "loadtest-"  # registrations: the uploaded tasks' ids start with it
    registration_every_s: float = 10.0  # soak: one upload this often
    windows: int = 5  # soak: latency compared across this many equal spans of the run
    training: TrainingJobSpec = TrainingJobSpec()  # train-while-serving: the job run beside the load
    train_s: float = 90.0  # train-while-serving: seconds of load after the job's submission
    concurrency: int = 4  # multi-task: images in flight, closed loop
    allow_remote: bool = False


def phases_for(scenario: str, spec: LoadSpec) -> list[Phase]:
    first = warmup(spec.rate, spec.warmup_s)
    half = spec.duration_s / 2
    if scenario in ("steady", "sweep", "soak"):
        return first + [Phase(scenario if scenario == "soak" else "steady", spec.rate, spec.duration_s)]
    if scenario == "burst":
        return first + [Phase("before", spec.rate, half), Phase("burst", spec.rate * spec.burst_factor, spec.burst_s),
                        Phase("after", spec.rate, half)]
    if scenario == "registrations":
        return first + [Phase("steady", spec.rate, half), Phase("registrations", spec.rate, half)] * spec.rounds
    raise ValueError(f"unknown scenario {scenario!r}: use one of {', '.join(SCENARIOS)}")


def registration_plan(phases: list[Phase], files: list[bytes], count: int, prefix: str = "loadtest-") -> list[Registration]:
    """`count` uploads spread over each registrations phase; the second half of each replaces the first half's tasks."""
    if not files:
        raise ValueError("the registrations scenario needs adapter files to upload")
    distinct = max(1, (count + 1) // 2)
    plan, start = [], 0.0
    for phase in phases:
        if phase.name == "registrations":
            plan += [Registration(start + i * phase.duration_s / count, f"{prefix}{i % distinct}", files[i % len(files)])
                     for i in range(count)]
        start += phase.duration_s
    return plan


def periodic_registrations(phases: list[Phase], files: list[bytes], every_s: float, distinct: int = 4,
                           prefix: str = "soak-") -> list[Registration]:
    """One upload every `every_s` over the last phase, cycling over `distinct` tasks (so most replace one)."""
    if not files:
        raise ValueError("periodic registrations need adapter files to upload")
    start, span = sum(p.duration_s for p in phases[:-1]), phases[-1].duration_s
    count = int(span // every_s)
    return [Registration(start + (i + 0.5) * every_s, f"{prefix}{i % distinct}", files[i % len(files)])
            for i in range(count)]


def run_scenario(scenario: str, target: Target, spec: LoadSpec, mix: TaskMix, image: bytes, out_dir: Path,
                 adapter_files: list[bytes] = (), admin_token: str | None = None) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    if scenario == "sweep":
        doc = _sweep(target, spec, mix, image, out_dir)
    elif scenario == "overload":
        doc = _overload(target, spec, mix, image, out_dir)
    elif scenario == "train-while-serving":
        doc = _train_while_serving(target, spec, mix, image, out_dir, admin_token)
    elif scenario == "multi-task":
        if not spec.allow_remote:
            require_loopback(target.url)
        doc = compare_multi_task(target.url, list(mix.tasks), image, target.content_type, spec.duration_s,
                                 spec.concurrency)
    elif scenario == "soak":
        doc = _soak(target, spec, mix, image, out_dir, list(adapter_files), admin_token)
    else:
        doc = _run_once(scenario, target, spec, mix, image, out_dir, list(adapter_files), admin_token)
    doc.update(scenario=scenario, mix=mix.describe(), target=target.url, uploads_to=target.admin_url or target.url,
               spec=asdict(spec))
    (out_dir / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def _run_once(scenario, target, spec, mix, image, out_dir, adapter_files, admin_token, name="latency") -> dict:
    phases = phases_for(scenario, spec)
    uploads = (registration_plan(phases, adapter_files, spec.registrations, spec.upload_prefix)
               if scenario == "registrations" else [])
    result = run_load(target, plan_arrivals(phases, mix, spec.seed), image, uploads, admin_token, spec.allow_remote)
    doc = report(result, phases, spec.slo_s)
    measured = [r for r in result.requests if r.phase != "warmup"]
    warmup_s = sum(p.duration_s for p in phases if not p.measured)  # warm-up comes first
    plot = plot_latency(measured, [p for p in phases if p.measured], spec.slo_s, out_dir / f"{name}.png",
                        f"{scenario}: {mix.describe()}", start_s=warmup_s)
    doc["plot"] = str(plot)
    if scenario in ("registrations", "burst"):
        doc["verdict"] = _phase_verdict(doc, "registrations" if scenario == "registrations" else "burst")
    return doc


def _soak(target, spec, mix, image, out_dir, adapter_files, admin_token) -> dict:
    """A long steady run with periodic uploads, sampling the service's memory; start against end."""
    phases = phases_for("soak", spec)
    uploads = periodic_registrations(phases, adapter_files, spec.registration_every_s) if adapter_files else []
    with MemorySampler(target.url, every_s=min(5.0, max(0.5, spec.duration_s / 10))) as sampler:
        result = run_load(target, plan_arrivals(phases, mix, spec.seed), image, uploads, admin_token, spec.allow_remote)
    doc = report(result, phases, spec.slo_s)
    measured = [r for r in result.requests if r.phase == "soak"]
    windows = latency_windows(measured, spec.warmup_s, spec.duration_s, spec.windows)
    first, last = windows[0]["p99_ms"], windows[-1]["p99_ms"]
    doc["soak"] = {"windows": windows, "p99_last_over_first": last / first if first and last else None,
                   "memory": memory_drift(sampler.samples, skip_s=spec.warmup_s)}
    doc["plot"] = str(plot_latency(measured, [phases[-1]], spec.slo_s, out_dir / "latency.png",
                                   f"soak: {mix.describe()}", start_s=spec.warmup_s))
    return doc


def latency_windows(records, start_s: float, duration_s: float, count: int) -> list[dict]:
    """p50/p99 and errors of the requests due in each of `count` equal spans of the run."""
    span = duration_s / count
    windows = []
    for i in range(count):
        inside = [r for r in records if start_s + i * span <= r.due_s < start_s + (i + 1) * span]
        summary = summarise(inside, span, 1.0)
        windows.append({"from_s": round(i * span, 1), "requests": summary["requests"], "errors": summary["errors"],
                        "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"]})
    return windows


def _phase_verdict(doc: dict, phase: str) -> dict:
    """The disturbed phase's p99 against the undisturbed one's, and whether any request failed."""
    calm = doc["phases"]["steady" if "steady" in doc["phases"] else "before"]
    hit = doc["phases"][phase]
    ratio = hit["p99_ms"] / calm["p99_ms"] if hit["p99_ms"] and calm["p99_ms"] else None
    return {"p99_ratio": ratio, "failed_requests": doc["overall"]["errors"]}


def _sweep(target, spec, mix, image, out_dir) -> dict:
    """Steady runs at rising rates; stops after two rates in a row miss the SLO."""
    if not spec.sweep_rates:
        raise ValueError("a sweep needs rates (sweep_rates)")
    runs, misses = {}, 0
    for rate in sorted(spec.sweep_rates):
        doc = _run_once("sweep", target, replace(spec, rate=rate), mix, image, out_dir, [], None, f"latency-{rate:g}")
        runs[f"{rate:g}"] = doc
        misses = 0 if meets_slo(doc["overall"], spec.slo_s) else misses + 1
        if misses == 2:
            break
    passing = [float(rate) for rate, doc in runs.items() if meets_slo(doc["overall"], spec.slo_s)]
    best = max(passing, default=None)
    return {"runs": runs, "max_rate_within_slo": best,
            "goodput_at_slo_rps": runs[f"{best:g}"]["overall"]["goodput_rps"] if best else 0.0}


def _capacity(target, spec, mix, image, out_dir) -> tuple[float, dict | None]:
    """The highest swept rate within the SLO (with no request refused), or `spec.rate` when no rates are given."""
    if not spec.sweep_rates:
        return spec.rate, None
    sweep = _sweep(target, spec, mix, image, out_dir / "sweep")
    if sweep["max_rate_within_slo"] is None:
        raise ValueError(f"no swept rate ({', '.join(f'{r:g}' for r in spec.sweep_rates)}) met the SLO: sweep lower rates")
    return sweep["max_rate_within_slo"], sweep


def _overload(target, spec, mix, image, out_dir) -> dict:
    """Requests carry the SLO as their deadline, as a client with an objective would send it."""
    target = replace(target, deadline_ms=spec.slo_s * 1000)
    capacity, sweep = _capacity(target, spec, mix, image, out_dir)
    levels = overload_levels(target, capacity, spec.duration_s, spec.warmup_s, spec.slo_s, mix, image, out_dir,
                             spec.seed, spec.allow_remote)
    recovery = burst_recovery(target, capacity, Burst(spec.burst_factor, spec.burst_s, calm_s=spec.duration_s),
                              spec.slo_s, mix, image, out_dir, spec.seed, spec.allow_remote)
    return {"capacity_rps": capacity, "sweep": sweep, "levels": levels, "recovery": recovery}


def _train_while_serving(target, spec, mix, image, out_dir, admin_token) -> dict:
    capacity, sweep = _capacity(target, spec, mix, image, out_dir)
    doc = train_while_serving(target, capacity, spec.training, spec.duration_s, spec.train_s, spec.warmup_s,
                              spec.slo_s, mix, image, out_dir, admin_token, spec.seed, spec.allow_remote)
    return {**doc, "capacity_rps": capacity, "sweep": sweep}


def format_scenario(doc: dict) -> str:
    if doc["scenario"] == "soak":
        soak = doc["soak"]
        windows = {f"from {w['from_s']} s": w for w in soak["windows"]}
        return (format_report(doc) + "\n\n" + format_rows(windows, "soak window", WINDOW_FIELDS) +
                f"\n\np99 last window / first: {soak['p99_last_over_first']}\nmemory (MiB): {soak['memory']}")
    if doc["scenario"] == "overload":
        recovery = doc["recovery"]
        return (format_rows(doc["levels"], "of capacity", LEVEL_FIELDS) + f"\n\ncapacity {doc['capacity_rps']:g} req/s; "
                f"burst: {recovery['burst']}; recovered {recovery['recovery_s']} s after the burst ended")
    if doc["scenario"] == "multi-task":
        return format_multi_task(doc)
    if doc["scenario"] == "train-while-serving":
        return (format_report(doc) + "\n\n" + format_rows({"while training": doc["while_training"]}, "span") +
                f"\n\ntraining job: {doc['training_job']}\nverdict: {doc['verdict']}")
    if doc["scenario"] != "sweep":
        text = format_report(doc)
        return text + (f"\nverdict: {doc['verdict']}" if "verdict" in doc else "")
    rows = {f"{rate}/s": run["overall"] for rate, run in doc["runs"].items()}
    return (format_rows(rows, "offered rate") + f"\n\nhighest rate within the SLO: {doc['max_rate_within_slo']} "
            f"req/s (goodput {doc['goodput_at_slo_rps']:.1f} req/s)")
