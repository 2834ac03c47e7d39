"""What a registration costs, and where: CPU milliseconds per upload of each process of a local cluster.

Uploads are sent with no prediction load. Every process's CPU time is read (psutil) before and
after and grouped by role (Ray names its processes `ray::ServeReplica:<app>:<Deployment>...`,
`ray::ProxyActor...`, plus `raylet` and `gcs_server`); what the same processes spend idle over as
long is subtracted. Only meaningful when the service runs on this machine (`loadtest compare`).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict

import psutil

from .report import percentile
from .runner import Registration, Target, run_load

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
    start = cpu_seconds_by_role()
    time.sleep(idle_s)
    idle_rate = {role: seconds / idle_s for role, seconds in _spent(start).items()}
    uploads = [Registration(i * spread_s / count, f"{prefix}{i}", files[i % len(files)]) for i in range(count)]
    start, began = cpu_seconds_by_role(), time.monotonic()
    result = run_load(target, [], b"", uploads, token)
    wall_s = time.monotonic() - began
    spent = {role: seconds - idle_rate.get(role, 0.0) * wall_s for role, seconds in _spent(start).items()}
    return {
        "uploads": count,
        "accepted": sum(1 for r in result.registrations if r.status in (200, 201)),
        "wall_s": round(wall_s, 2),
        "registration_p50_ms": round(1000 * (percentile([r.latency_s for r in result.registrations], 50) or 0), 1),
        "cpu_ms_per_upload": {role: round(1000 * max(seconds, 0.0) / count, 2)
                              for role, seconds in sorted(spent.items(), key=lambda kv: -kv[1])},
    }


def _spent(since: dict[str, float]) -> dict[str, float]:
    now = cpu_seconds_by_role()
    return {role: now[role] - since.get(role, 0.0) for role in now}
