"""What a request costs, and where: CPU milliseconds per prediction or per upload of each process of a local cluster.

Every process's CPU time is read (psutil) before and after the requests and grouped by role (Ray names its
processes `ray::ServeReplica:<app>:<Deployment>...`, `ray::ProxyActor...`, plus `raylet` and `gcs_server`);
what the same processes spend idle over as long is subtracted. Uploads are sent with no prediction load,
predictions at a rate well below capacity, so batches stay small and nothing queues. Only meaningful when
the service runs on this machine (`loadtest compare`).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Callable

import psutil

from .mixes import TaskMix
from .report import percentile
from .runner import LoadResult, Registration, Target, run_load
from .schedule import Phase, plan_arrivals

RAY_PROCESS = re.compile(r"ray::(?:ServeReplica:[^:]+:)?([A-Za-z]+)")
RAY_DAEMONS = ("raylet", "gcs_server")


def cpu_seconds_by_role() -> dict[str, float]:
    """User + system CPU seconds so far, summed per role, of this machine's Ray processes."""
    totals: dict[str, float] = defaultdict(float)
    for process in psutil.process_iter(["cmdline", "cpu_times"]):
        role = process_role(" ".join(process.info["cmdline"] or []))
        times = process.info["cpu_times"]
        if role is not None and times is not None:
            totals[role] += times.user + times.system
    return dict(totals)


def process_role(cmdline: str) -> str | None:
    """`TaskReplica` for a replica of that deployment, `ProxyActor`, `raylet`...; None if not Ray's."""
    found = RAY_PROCESS.match(cmdline)
    if found:
        return found.group(1)
    executable = cmdline.split(" ", 1)[0]
    return next((daemon for daemon in RAY_DAEMONS if executable.endswith(f"/{daemon}")), None)


def measure_upload_cost(target: Target, files: list[bytes], count: int, spread_s: float, token: str | None,
                        idle_s: float = 3.0, prefix: str = "upload-cost-") -> dict:
    """`count` new tasks uploaded open loop over `spread_s` seconds; CPU ms per upload by role."""
    uploads = [Registration(i * spread_s / count, f"{prefix}{i}", files[i % len(files)]) for i in range(count)]
    result, wall_s, cpu_ms = _cpu_ms_per_request(lambda: run_load(target, [], b"", uploads, token), count, idle_s)
    return {
        "uploads": count,
        "accepted": sum(1 for r in result.registrations if r.status in (200, 201)),
        "wall_s": round(wall_s, 2),
        "registration_p50_ms": round(1000 * (percentile([r.latency_s for r in result.registrations], 50) or 0), 1),
        "cpu_ms_per_upload": cpu_ms,
    }


def measure_prediction_cost(target: Target, mix: TaskMix, image: bytes, rate: float, duration_s: float,
                            idle_s: float = 3.0) -> dict:
    """Predictions open loop at `rate` for `duration_s` seconds; CPU ms per prediction by role."""
    arrivals = plan_arrivals([Phase("measured", rate, duration_s)], mix)
    result, wall_s, cpu_ms = _cpu_ms_per_request(lambda: run_load(target, arrivals, image), len(arrivals), idle_s)
    answered = [r.latency_s for r in result.requests if r.ok]
    return {
        "predictions": len(arrivals),
        "answered": len(answered),
        "rate": rate,
        "wall_s": round(wall_s, 2),
        "p50_ms": round(1000 * (percentile(answered, 50) or 0), 1),
        "cpu_ms_per_prediction": cpu_ms,
    }


def _cpu_ms_per_request(send: Callable[[], LoadResult], count: int, idle_s: float
                        ) -> tuple[LoadResult, float, dict[str, float]]:
    """Runs `send`; the CPU ms per request each role spent over what it spends idle, largest first."""
    start = cpu_seconds_by_role()
    time.sleep(idle_s)
    idle_rate = {role: seconds / idle_s for role, seconds in _spent(start).items()}
    start, began = cpu_seconds_by_role(), time.monotonic()
    result = send()
    wall_s = time.monotonic() - began
    spent = {role: seconds - idle_rate.get(role, 0.0) * wall_s for role, seconds in _spent(start).items()}
    cpu_ms = {role: round(1000 * max(seconds, 0.0) / count, 2)
              for role, seconds in sorted(spent.items(), key=lambda kv: -kv[1])}
    return result, wall_s, cpu_ms


def _spent(since: dict[str, float]) -> dict[str, float]:
    now = cpu_seconds_by_role()
    return {role: now[role] - since.get(role, 0.0) for role in now}
