"""Summaries of a load run: latency percentiles, throughput, goodput at the SLO, errors, per task and phase."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from .runner import LoadResult, RequestRecord
from .schedule import Phase


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarise(records: list[RequestRecord], offered_s: float, slo_s: float, served_s: float | None = None) -> dict:
    """Offered rate per second of `offered_s`; throughput and goodput per second of `served_s`, which
    adds the time the server took to drain a backlog after the last arrival (default: none)."""
    served_s = offered_s if served_s is None else served_s
    ok = [r.latency_s for r in records if r.ok]
    good = sum(1 for latency in ok if latency <= slo_s)
    errors = Counter(str(r.status) for r in records if not r.ok)
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "errors_by_status": dict(sorted(errors.items())),
        "offered_rps": len(records) / offered_s if offered_s > 0 else 0.0,
        "throughput_rps": len(ok) / served_s if served_s > 0 else 0.0,
        "goodput_rps": good / served_s if served_s > 0 else 0.0,
        "p50_ms": milliseconds(percentile(ok, 50)),
        "p95_ms": milliseconds(percentile(ok, 95)),
        "p99_ms": milliseconds(percentile(ok, 99)),
        "max_ms": milliseconds(max(ok) if ok else None),
    }


def meets_slo(summary: dict, slo_s: float) -> bool:
    return summary["errors"] == 0 and summary["p99_ms"] is not None and summary["p99_ms"] <= slo_s * 1000


def report(result: LoadResult, phases: list[Phase], slo_s: float) -> dict:
    """The whole run (warm-up left out), each phase, each task, the generator's lag and any registrations."""
    seconds_of: dict[str, float] = defaultdict(float)  # measured phases; a name may recur (rounds): they pool
    for p in phases:
        if p.measured:
            seconds_of[p.name] += p.duration_s
    seconds = sum(seconds_of.values())
    records = [r for r in result.requests if r.phase in seconds_of]
    # Throughput counts what the server finished, so when it falls behind its backlog's drain
    # time is part of the measured span: an overloaded run does not report the offered rate.
    drain = max(0.0, result.wall_s - sum(p.duration_s for p in phases))
    by_task: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in records:
        by_task[r.task].append(r)
    return {
        "slo_ms": slo_s * 1000,
        "overall": summarise(records, seconds, slo_s, seconds + drain),
        "phases": {name: summarise([r for r in records if r.phase == name], seconds_of[name], slo_s)
                   for name in seconds_of},
        "tasks": {task: summarise(rs, seconds, slo_s, seconds + drain) for task, rs in sorted(by_task.items())},
        "generator_lag_ms": {"p99": milliseconds(percentile(result.lag_s, 99)), "max": milliseconds(max(result.lag_s, default=None))},
        "registrations": _registrations(result),
        "first_errors": sorted({r.error for r in records if r.error})[:5],
    }


def _registrations(result: LoadResult) -> dict:
    regs = result.registrations
    return {
        "count": len(regs),
        "accepted": sum(1 for r in regs if r.status in (200, 201, 202)),
        "servable_everywhere": sum(1 for r in regs if r.servable_everywhere),
        "statuses": dict(sorted(Counter(str(r.status) for r in regs).items())),
        "p50_ms": milliseconds(percentile([r.latency_s for r in regs], 50)),
        "max_ms": milliseconds(max((r.latency_s for r in regs), default=None)),
    }


def milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


ROW_FIELDS = ("requests", "errors", "offered_rps", "throughput_rps", "goodput_rps", "p50_ms", "p95_ms", "p99_ms")


def format_rows(rows: dict[str, dict], title: str, fields: tuple[str, ...] = ROW_FIELDS) -> str:
    """A Markdown table: one row per named summary, one column per field."""
    lines = [f"| {title} | " + " | ".join(fields) + " |", "|---" * (len(fields) + 1) + "|"]
    for name, summary in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(summary[f]) for f in fields) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def format_report(doc: dict, max_tasks: int = 10) -> str:
    busiest = dict(sorted(doc["tasks"].items(), key=lambda kv: -kv[1]["requests"])[:max_tasks])
    parts = [format_rows({"overall": doc["overall"], **doc["phases"]}, "phase"), "",
             format_rows(busiest, f"task (busiest {len(busiest)} of {len(doc['tasks'])})"), "",
             f"SLO {doc['slo_ms']:.0f} ms; generator lag p99 {doc['generator_lag_ms']['p99']} ms"]
    if doc["registrations"]["count"]:
        parts.append(f"registrations: {doc['registrations']}")
    if doc["first_errors"]:
        parts.append(f"first errors: {doc['first_errors']}")
    return "\n".join(parts)
