"""Which tasks get their own request series in /metrics: the busiest few by recent traffic, the rest as one.

A latency histogram per task that ever had traffic grows without bound (16 series a task): at ten
thousand tasks one scrape would carry over 160,000 series. So at most `limit` tasks are labelled by
their id and every other request is counted under OTHER_TASK. The set changes only at a re-rank,
at most once per `rerank_s`, so series stay put between scrapes; a task that loses its label has its
series removed (should it come back, its counters restart, which Prometheus' rate() reads as a reset).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

OTHER_TASK = "(other)"  # every task without series of its own, and ids not known to be registered


class TaskLabels:
    def __init__(self, limit: int, rerank_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.rerank_s, self.clock = limit, rerank_s, clock
        self.labelled: set[str] = set()
        self.recent: Counter[str] = Counter()  # requests since the last re-rank, plus half of those before
        self._rerank_at = clock() + rerank_s

    def label(self, task_id: str) -> str:
        """The label a request of `task_id`, a registered task, is counted under; a free place goes to it at once."""
        self.recent[task_id] += 1
        if task_id in self.labelled or len(self.labelled) < self.limit:
            self.labelled.add(task_id)
            return task_id
        return OTHER_TASK

    def rerank(self) -> set[str]:
        """When due, the busiest tasks become the labelled ones; returns those that lost their label."""
        now = self.clock()
        if now < self._rerank_at:
            return set()
        self._rerank_at = now + self.rerank_s
        # Ties keep the tasks labelled now, so an even load does not move series between scrapes.
        ranked = sorted(self.recent.items(), key=lambda item: (-item[1], item[0] not in self.labelled))
        busiest = {task for task, _ in ranked[: self.limit]}
        dropped, self.labelled = self.labelled - busiest, busiest
        self.recent = Counter({task: n / 2 for task, n in self.recent.items() if n >= 1})
        return dropped

    def forget(self, task_id: str) -> bool:
        """A removed task: its place is freed now. Whether it had one."""
        self.recent.pop(task_id, None)
        had = task_id in self.labelled
        self.labelled.discard(task_id)
        return had
