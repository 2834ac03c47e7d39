"""How replicas learn that the task set changed, and how a change waits until every replica serves it.

Each change is announced with a new generation number. Replicas send heartbeats carrying the
generation they have applied; one that is up to date waits inside its heartbeat (a long poll, at
most `wait_s`) until the next announcement, so news reaches it at once while an idle replica beats
rarely. Answers to one replica come at least `coalesce_s` apart: a burst of changes reaches it in a
few passes instead of one per change. A change waits (no polling) until a heartbeat reports
progress; a replica that stops beating is forgotten after `forget_after_s`, so a dead one never
blocks a change. Plain asyncio, run on one event loop: no locks.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class ReplicaState:
    applied: int | None  # None until the replica's first sync
    seen_at: float
    answered_at: float = float("-inf")  # when its last long poll was answered


@dataclass(frozen=True)
class Spread:
    """Which live replicas serve a generation, and which do not yet."""

    replicas: tuple[str, ...]
    pending: tuple[str, ...]


class ChangeFeed:
    """Generations, heartbeats, long polls and waiting until a generation is applied everywhere."""

    def __init__(self, coalesce_s: float, forget_after_s: float, first_generation: int | None = None) -> None:
        # From the clock by default, so a restarted feed never hands out a generation seen before.
        self.generation = time.time_ns() if first_generation is None else first_generation
        self.coalesce_s, self.forget_after_s = coalesce_s, forget_after_s
        self.replicas: dict[str, ReplicaState] = {}
        self._progress = asyncio.Event()  # set, then replaced, whenever a replica reports news
        self._announced = asyncio.Event()  # set, then replaced, whenever the generation moves

    def announce(self) -> int:
        """The set changed: returns the generation every replica must reach to serve the change."""
        self.generation += 1
        self._announced.set()  # answers every waiting heartbeat
        self._announced = asyncio.Event()
        return self.generation

    def wake(self) -> None:
        """News for whoever waits on progress (a replica applied something, or joined)."""
        self._progress.set()  # wakes every waiter, each checks what it waits for
        self._progress = asyncio.Event()

    async def heartbeat(self, replica_id: str, applied: int | None, wait_s: float = 0.0) -> int:
        """Records what the replica has applied; answers the generation to reach. A replica already there is
        answered at the next announcement or after `wait_s`, whichever comes first."""
        state = self.replicas.get(replica_id)
        if state is None or state.applied != applied:
            self.wake()
        state = self.replicas.setdefault(replica_id, ReplicaState(applied, time.monotonic()))
        state.applied, state.seen_at = applied, time.monotonic()
        if wait_s > 0:
            await self._hold(state, wait_s)
            state.seen_at = state.answered_at = time.monotonic()  # alive all along
            self.replicas.setdefault(replica_id, state)
        return self.generation

    async def _hold(self, state: ReplicaState, wait_s: float) -> None:
        """Until there is news for the replica, then until `coalesce_s` has passed since its last answer."""
        if state.applied == self.generation:
            await set_within(self._announced, wait_s)
        since = time.monotonic() - state.answered_at
        if since < self.coalesce_s:
            await asyncio.sleep(self.coalesce_s - since)

    def leave(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)

    def live(self) -> dict[str, ReplicaState]:
        """Replicas heard from within `forget_after_s`; the others are forgotten."""
        now = time.monotonic()
        self.replicas = {r: s for r, s in self.replicas.items() if now - s.seen_at <= self.forget_after_s}
        return self.replicas

    def serving(self) -> list[str]:
        """Live replicas that have synced at least once (a replica beats once before it has loaded)."""
        return sorted(r for r, s in self.live().items() if s.applied is not None)

    async def wait_for_news(self, timeout_s: float) -> None:
        await set_within(self._progress, timeout_s)

    async def wait_until_applied(self, generation: int, timeout_s: float) -> Spread:
        """Waits until every live replica has applied `generation`, or `timeout_s` passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = self.live()
            pending = tuple(sorted(r for r, s in live.items() if s.applied is None or s.applied < generation))
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return Spread(tuple(sorted(live)), pending)
            # Woken by progress, or in time to forget a replica that died.
            await set_within(self._progress, min(left, self.forget_after_s / 2))


async def set_within(event: asyncio.Event, timeout_s: float) -> None:
    """Sleeps until `event` is set or `timeout_s` passed."""
    try:
        await asyncio.wait_for(event.wait(), max(timeout_s, 0.0))
    except asyncio.TimeoutError:
        pass
