"""The task board: one small deployment that tells replicas when the store changed and learns when they caught up.

Every registration or removal is first made durable in the adapter store, then announced here,
which bumps a generation number. Replicas send a heartbeat every `sync_interval_s` carrying the
generation they have applied and their metrics; when the board's generation is newer they re-read
the store. `wait_until_applied` is how a PUT learns that its version is servable everywhere.
A replica that stops beating is forgotten after `forget_after_s`, so a dead one never blocks a PUT.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ray import serve


@dataclass
class ReplicaState:
    applied: int | None  # None until the replica's first sync
    seen_at: float
    metrics_text: str = ""


@serve.deployment(num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
class TaskBoard:
    def __init__(self, forget_after_s: float = 5.0) -> None:
        # Start from the clock, so a restarted board never hands out a generation seen before.
        self.generation = time.time_ns()
        self.forget_after_s = forget_after_s
        self.replicas: dict[str, ReplicaState] = {}
        self.process_metrics: dict[str, tuple[float, str]] = {}  # ingress processes: (seen_at, text)

    def announce(self) -> int:
        """The store changed: returns the generation every replica must reach to serve the change."""
        self.generation += 1
        return self.generation

    def heartbeat(self, replica_id: str, applied: int | None, metrics_text: str | None = None) -> int:
        state = self.replicas.setdefault(replica_id, ReplicaState(applied, time.monotonic()))
        state.applied, state.seen_at = applied, time.monotonic()
        if metrics_text is not None:
            state.metrics_text = metrics_text
        return self.generation

    def leave(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)

    def report_metrics(self, process_id: str, metrics_text: str) -> None:
        self.process_metrics[process_id] = (time.monotonic(), metrics_text)

    def _live(self) -> dict[str, ReplicaState]:
        now = time.monotonic()
        self.replicas = {r: s for r, s in self.replicas.items() if now - s.seen_at <= self.forget_after_s}
        return self.replicas

    async def wait_until_applied(self, generation: int, timeout_s: float) -> dict:
        """Waits until every live replica has applied `generation`; says which ones have and have not."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = self._live()
            pending = sorted(r for r, s in live.items() if s.applied is None or s.applied < generation)
            if not pending or time.monotonic() >= deadline:
                return {"replicas": sorted(live), "pending": pending}
            await asyncio.sleep(0.01)

    def status(self) -> dict:
        live = self._live()
        return {"replicas": sorted(live), "generation": self.generation}

    def metric_texts(self) -> dict[str, str]:
        now = time.monotonic()
        texts = {r: s.metrics_text for r, s in self._live().items() if s.metrics_text}
        for process_id, (seen_at, text) in list(self.process_metrics.items()):
            if now - seen_at > 60.0:  # an ingress that went away
                del self.process_metrics[process_id]
            else:
                texts[process_id] = text
        return texts
