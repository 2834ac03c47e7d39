"""The task board: where the task set changes, and how replicas learn of it and say they caught up.

Uploads and removals come here, not to the serving replicas: the board validates an adapter file
against the served backbone, publishes it to the store (atomic, durable), then announces it, which
bumps a generation number. Doing that here keeps parsing, hashing and file writes off the replicas'
cores and interpreter lock, so a burst of uploads costs serving little; the process runs at a lower
OS priority (`board_nice`) for the same reason. It needs only the backbone's description, which
replicas send with their heartbeats, not its weights.

Replicas send heartbeats carrying the generation they have applied and their metrics; when the
board's generation is newer they re-read the store. A replica that is up to date waits inside its
heartbeat call (a long poll, at most `heartbeat_s`) until the next announcement, so news reaches it
at once while an idle replica beats once per `heartbeat_s`: each beat is a Serve call that costs
both sides a few CPU ms, and polling at the rate news must travel cost every replica 4% of a core.
For the same reason answers to one replica come at least `sync_coalesce_s` apart: an isolated change
still reaches it at once, a burst of them in a few passes instead of one per upload.
A registration or removal answers once every live replica has applied its generation: it sleeps
until a heartbeat reports progress (no polling: a burst of uploads means many waiters). A replica
that stops beating is forgotten after `forget_after_s`, so a dead one never blocks a PUT.

Uploads reach the board through the ingress (the main port) or straight from a client on its own
admin port (`admin_api.py`), which keeps them off the processes that serve predictions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

import ray
from prometheus_client import CollectorRegistry
from ray import serve

from ..adapters.backbone import BackboneInfo
from ..adapters.errors import AdapterFileError
from ..runtime.errors import InvalidTaskIdError
from ..runtime.metrics import RegistrationMetrics, exposition
from ..runtime.publishing import publish_adapter
from ..runtime.store import AdapterStore
from ..runtime.task_ids import validate_task_id
from .admin_api import admin_api, listen, serve_admin_api
from .config import ServeConfig
from .priority import lower_priority
from .task_summary import summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangeReply:
    """What a registration or removal did, and which live replicas serve it (`pending`: not yet)."""

    ok: bool
    status: int
    message: str
    generation: int | None = None  # what every replica must reach to serve the change
    task: dict | None = None
    replicas: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()


@dataclass
class ReplicaState:
    applied: int | None  # None until the replica's first sync
    seen_at: float
    metrics_text: str = ""
    answered_at: float = float("-inf")  # when its last long poll was answered


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)  # actor options (no CPU reserved): app.py
class TaskBoard:
    # Every method is async: Serve runs plain ones on a thread pool, beside the event loop where the
    # heartbeats change the same dicts. __init__ too, so the admin port is served on that loop.
    async def __init__(self, config: ServeConfig) -> None:
        lower_priority(config.board_nice)  # serving first: a burst of uploads waits for the cores
        self.config = config
        self.store = AdapterStore(config.store_dir)
        # Start from the clock, so a restarted board never hands out a generation seen before.
        self.generation = time.time_ns()
        self.forget_after_s = max(5.0, 5 * config.heartbeat_s)
        self.replicas: dict[str, ReplicaState] = {}
        self.process_metrics: dict[str, tuple[float, str]] = {}  # ingress processes: (seen_at, text)
        self.backbone: BackboneInfo | None = None  # what the replicas serve, from their heartbeats
        self._progress = asyncio.Event()  # set, then replaced, whenever a replica reports news
        self._announced = asyncio.Event()  # set, then replaced, whenever the generation moves
        self.process_id = f"board-{serve.get_replica_context().replica_id.unique_id}"
        self.registry = CollectorRegistry()
        self.metrics = RegistrationMetrics(self.registry)
        self.admin_url = self._open_admin_port() if config.admin_port is not None else None

    def _open_admin_port(self) -> str:
        sock = listen(self.config.admin_host, self.config.admin_port)
        self._admin_server = serve_admin_api(admin_api(self, self.config), sock)
        host = self.config.admin_host
        if host in ("0.0.0.0", "::"):  # every interface: name the one Ray knows this node by
            host = ray.util.get_node_ip_address()
        return f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"

    # --- changes to the task set -----------------------------------------------------------
    async def register(self, task_id: str, data: bytes) -> ChangeReply:
        """Validates an adapter file, publishes it as the task's next version, announces it, and answers
        once every replica serves it."""
        began = time.perf_counter()
        backbone = await self._served_backbone()
        if backbone is None:
            return ChangeReply(False, 503, "no replica has loaded the backbone yet: retry in a few seconds")
        try:
            published, generation = await self._commit(publish_adapter, self.store, backbone, task_id, data,
                                                       self.config.max_adapter_bytes)
        except InvalidTaskIdError as exc:
            return ChangeReply(False, 400, str(exc))
        except AdapterFileError as exc:
            return ChangeReply(False, 422, str(exc))
        summary = summarize(task_id, published.entry.version, published.adapter.header)
        reply = await self._spread(ChangeReply(True, 201 if published.created else 200, "registered", generation,
                                               summary))
        if not reply.pending:
            self.metrics.latency.observe(time.perf_counter() - began)
        return reply

    async def remove(self, task_id: str) -> ChangeReply:
        try:
            validate_task_id(task_id)
        except InvalidTaskIdError as exc:
            return ChangeReply(False, 400, str(exc))
        removed, generation = await self._commit(self.store.remove, task_id)
        if removed is None:
            return ChangeReply(False, 404, f"task {task_id!r} is not registered")
        return await self._spread(ChangeReply(True, 200, "removed", generation))

    async def _commit(self, change, *args):
        """(what `change(*args)` returned, the generation announcing it): the store change runs in a thread
        and is announced as soon as it is made, even if the caller has gone meanwhile. Serve cancels a
        request whose HTTP client disconnected, and that cancels this call too: without the shield the
        change would be on disk, but no replica would hear of it until the next one."""

        async def change_and_announce():
            result = await asyncio.to_thread(change, *args)
            return result, (self.announce() if result is not None else None)

        return await asyncio.shield(change_and_announce())

    async def _spread(self, reply: ChangeReply) -> ChangeReply:
        """The reply once every live replica serves the change, or `registration_timeout_s` passed."""
        spread = await self._wait_until_applied(reply.generation, self.config.registration_timeout_s)
        return replace(reply, replicas=tuple(spread["replicas"]), pending=tuple(spread["pending"]))

    async def _served_backbone(self) -> BackboneInfo | None:
        """The replicas' backbone; right after a start, waits for the first replica to report it."""
        deadline = time.monotonic() + self.config.registration_timeout_s
        while self.backbone is None and time.monotonic() < deadline:
            await _set_within(self._progress, deadline - time.monotonic())
        return self.backbone

    def announce(self) -> int:
        """The store changed: returns the generation every replica must reach to serve the change."""
        self.generation += 1
        self._announced.set()  # answers every waiting heartbeat
        self._announced = asyncio.Event()
        return self.generation

    async def heartbeat(self, replica_id: str, applied: int | None, metrics_text: str | None = None,
                        backbone: BackboneInfo | None = None, wait_s: float = 0.0) -> int:
        """Records what the replica has applied; answers the generation to reach. A replica already there
        is answered at the next announcement or after `wait_s`, whichever comes first."""
        state = self.replicas.get(replica_id)
        news = state is None or state.applied != applied or (backbone is not None and self.backbone is None)
        if backbone is not None:
            if self.backbone is not None and backbone.fingerprint != self.backbone.fingerprint:
                log.error("replica %s serves backbone %s..., others %s...", replica_id, backbone.fingerprint[:16],
                          self.backbone.fingerprint[:16])
            self.backbone = self.backbone or backbone
        if news:
            self._progress.set()  # wakes every waiter, each checks what it waits for
            self._progress = asyncio.Event()
        state = self.replicas.setdefault(replica_id, ReplicaState(applied, time.monotonic()))
        state.applied, state.seen_at = applied, time.monotonic()
        if metrics_text is not None:
            state.metrics_text = metrics_text
        if wait_s > 0:
            await self._hold(state, wait_s)
            state.seen_at = state.answered_at = time.monotonic()  # alive all along
            self.replicas.setdefault(replica_id, state)
        return self.generation

    async def _hold(self, state: ReplicaState, wait_s: float) -> None:
        """A replica's long poll: until there is news for it, then until `sync_coalesce_s` has passed since
        its last answer, so that the changes of a burst reach it together."""
        if state.applied == self.generation:
            await _set_within(self._announced, wait_s)
        since = time.monotonic() - state.answered_at
        if since < self.config.sync_coalesce_s:
            await asyncio.sleep(self.config.sync_coalesce_s - since)

    async def leave(self, replica_id: str) -> None:
        self.replicas.pop(replica_id, None)

    async def report_metrics(self, process_id: str, metrics_text: str) -> None:
        self.process_metrics[process_id] = (time.monotonic(), metrics_text)

    def _live(self) -> dict[str, ReplicaState]:
        now = time.monotonic()
        self.replicas = {r: s for r, s in self.replicas.items() if now - s.seen_at <= self.forget_after_s}
        return self.replicas

    async def _wait_until_applied(self, generation: int, timeout_s: float) -> dict:
        """Waits until every live replica has applied `generation`; says which ones have and have not."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = self._live()
            pending = sorted(r for r, s in live.items() if s.applied is None or s.applied < generation)
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                return {"replicas": sorted(live), "pending": pending}
            await _set_within(self._progress, min(left, self.forget_after_s / 2))  # or in time to forget a dead replica

    async def status(self) -> dict:
        """`replicas`: the live ones that serve (a replica beats once before it has loaded the backbone)."""
        serving = sorted(r for r, s in self._live().items() if s.applied is not None)
        return {"replicas": serving, "generation": self.generation, "admin_url": self.admin_url}

    async def metric_texts(self) -> dict[str, str]:
        now = time.monotonic()
        texts = {r: s.metrics_text for r, s in self._live().items() if s.metrics_text}
        texts[self.process_id] = exposition(self.registry)
        for process_id, (seen_at, text) in list(self.process_metrics.items()):
            if now - seen_at > 60.0:  # an ingress that went away
                del self.process_metrics[process_id]
            else:
                texts[process_id] = text
        return texts


async def _set_within(event: asyncio.Event, timeout_s: float) -> None:
    """Sleeps until `event` is set (a heartbeat brought news, or the generation moved) or `timeout_s` passed."""
    try:
        await asyncio.wait_for(event.wait(), max(timeout_s, 0.0))
    except asyncio.TimeoutError:
        pass
