"""Process settings for serving: a heap the collector leaves alone, a lower OS priority, Ray's inline-call size.

- Garbage collection: a full collection walks every container object a replica holds (hundreds of
  thousands once torch, timm, Ray and Serve are loaded) with the interpreter lock held, stalling every
  request in flight (BENCHMARKS.md); what exists once a process has started is moved out of its sight.
- Priority: processes whose work can wait (the task board, training) yield the cores to serving; Ray starts
  its workers, the serving replicas among them, at nice 15, so a trainer must go lower than that.
- Ray: arguments up to `max_direct_call_object_size` travel with the call; a decoded image, an adapter
  upload and a request body are just over the 100 KiB default, so it is raised to 1 MiB (BENCHMARKS.md).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def freeze_startup_heap() -> None:
    """Call once a process has loaded what it keeps: later full collections walk only newer objects."""
    gc.collect()  # what start-up left as garbage goes now, rather than living on frozen
    gc.freeze()


@contextmanager
def heap_frozen() -> Iterator[None]:
    """For a measurement: what exists when it starts is out of the collector's sight until it ends (any
    garbage among it is freed by the first collection after)."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:  # a process that froze its own heap keeps it frozen
            gc.unfreeze()


def lower_priority(levels: int) -> None:
    """Puts every thread of this process `levels` nice levels below its main thread's (Ray's workers
    run at 15), capped at 19. On Linux nice is per thread: Serve runs `__init__` on a thread of its
    own and Ray's calls arrive on others; threads started later inherit their starter's level."""
    target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + levels)
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():  # not Linux: nice is per process
        os.setpriority(os.PRIO_PROCESS, os.getpid(), target)
        return
    for tid in (int(name) for name in os.listdir(tasks)):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(target, os.getpriority(os.PRIO_PROCESS, tid)))
        except ProcessLookupError:  # the thread ended meanwhile
            pass


def yield_to_serving() -> None:
    """The calling thread, and the threads it starts later (torch's among them), run only on CPU time no
    other process wants: Linux's SCHED_IDLE (per thread), elsewhere the lowest nice level. Training beside
    serving then takes idle cores and steps aside the moment a request needs them."""
    if hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.setpriority(os.PRIO_PROCESS, 0, 19)


def background_torch_threads() -> int:
    """Half the cores for torch in a process that trains beside serving: the other half stays free."""
    return max(1, (os.cpu_count() or 2) // 2)


RAY_ENV = {"RAY_max_direct_call_object_size": str(1 << 20)}
# An S3 store's credentials, region and endpoint, as set where the application is deployed.
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
           "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


def actor_options(**options: Any) -> dict[str, Any]:
    """`ray_actor_options` for a mosaserve deployment: its worker runs with RAY_ENV and the deploying process's
    AWS settings on any cluster (Serve adds these variables to whatever runtime_env the application's config
    gives)."""
    aws = {name: os.environ[name] for name in AWS_ENV if name in os.environ}
    return {**options, "runtime_env": {"env_vars": {**RAY_ENV, **aws}}}


def init_ray(**options: Any) -> None:
    """`ray.init(**options)` with RAY_ENV in this process's environment first (a value already set wins): a
    cluster it starts runs every process with it, Serve's HTTP proxy too. A cluster it joins keeps what it
    was started with; start one with the same variables (README)."""
    import ray

    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(**options)
