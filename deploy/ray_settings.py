"""The Ray setting mosaserve's request path is tuned for, and starting a local cluster with it.

Ray sends a call's argument (or result) along with the call only up to max_direct_call_object_size,
100 KiB by default; anything larger goes through the node's shared-memory object store, at a cost to the
raylet. A decoded 224 px image (150 kB, ingress -> replica), an adapter upload (about 340 kB, ingress ->
board) and the body of either as Serve's proxy hands it to the ingress are all just over it: at 1 MiB they
travel inline, and the raylet's 3.7 CPU ms per prediction and per upload go (BENCHMARKS.md).
"""

from __future__ import annotations

import os
from typing import Any

RAY_ENV = {"RAY_max_direct_call_object_size": str(1 << 20)}


def actor_options(**options: Any) -> dict[str, Any]:
    """`ray_actor_options` for a mosaserve deployment: its worker runs with RAY_ENV on any cluster (Serve adds
    these variables to whatever runtime_env the application's config gives)."""
    return {**options, "runtime_env": {"env_vars": dict(RAY_ENV)}}


def init_ray(**options: Any) -> None:
    """`ray.init(**options)` with RAY_ENV in this process's environment first (a value already set wins): a
    cluster it starts runs every process with it, Serve's HTTP proxy too. A cluster it joins keeps what it
    was started with; start one with the same variables (README)."""
    import ray

    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(**options)
