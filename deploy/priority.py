"""Lowering a process's OS scheduling priority, so that what it does yields the cores to serving."""

from __future__ import annotations

import os
from pathlib import Path


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
