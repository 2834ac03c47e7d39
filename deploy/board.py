"""The task board: where the task set changes, and how replicas learn of it (runtime/change_feed.py).

Uploads and removals come here, not to the serving replicas: the board validates an adapter file
against the served backbone, publishes it to the store (atomic, durable), then announces it. Doing
that here keeps parsing, hashing and file writes off the replicas' cores and interpreter lock; the
process runs at a lower OS priority (`board_nice`) for the same reason. It needs only the backbone's
description, which replicas send with their heartbeats, not its weights. A change answers once
every live replica serves it. Uploads come through the ingress or the board's own admin port.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

import ray
from prometheus_client import CollectorRegistry
from ray import serve

from ..adapters.backbone import BackboneInfo
from ..adapters.errors import AdapterFileError
from ..runtime.change_feed import ChangeFeed
from ..runtime.errors import BackboneNotReadyError, InvalidTaskIdError, UnknownTaskError
from ..runtime.publishing import Published, publish_adapters
from ..runtime.store import open_store
from ..runtime.task_ids import validate_task_id
from .config import ServeConfig
from .http.admin import admin_api, listen, serve_admin_api
from .messages import ChangeReply, summarize
from .observability.metrics import RegistrationMetrics, exposition
from .process import lower_priority

log = logging.getLogger(__name__)


@serve.deployment(num_replicas=1, max_ongoing_requests=1000)  # actor options (no CPU reserved): app.py
class TaskBoard:
    """The Serve deployment around the store and its change feed; the admin port runs on its event loop."""

    # Every method is async: Serve runs plain ones on a thread pool, beside the event loop where the
    # heartbeats change the same state. __init__ too, so the admin port is served on that loop.
    async def __init__(self, config: ServeConfig) -> None:
        lower_priority(config.board.board_nice)  # serving first: a burst of uploads waits for the cores
        self.config = config
        self.store = open_store(config.runtime.store_dir, config.runtime.store_cache_dir)
        self.feed = ChangeFeed(config.board.sync_coalesce_s, forget_after_s=max(5.0, 5 * config.board.heartbeat_s))
        self.replica_metrics: dict[str, str] = {}  # the latest text each replica sent
        self.process_metrics: dict[str, tuple[float, str]] = {}  # ingress processes: (seen_at, text)
        self.backbone: BackboneInfo | None = None  # what the replicas serve, from their heartbeats
        self.process_id = f"board-{serve.get_replica_context().replica_id.unique_id}"
        self.registry = CollectorRegistry()
        self.metrics = RegistrationMetrics(self.registry)
        self.admin_url = self._open_admin_port() if config.board.admin_port is not None else None

    def _open_admin_port(self) -> str:
        sock = listen(self.config.board.admin_host, self.config.board.admin_port)
        self._admin_server = serve_admin_api(admin_api(self, self.config), sock)
        host = self.config.board.admin_host
        if host in ("0.0.0.0", "::"):  # every interface: name the one Ray knows this node by
            host = ray.util.get_node_ip_address()
        return f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"

    # --- changes to the task set -----------------------------------------------------------
    async def register(self, task_id: str, data: bytes) -> ChangeReply:
        """Validates an adapter file, publishes it as the task's next version, announces it, and answers
        once every replica serves it."""
        began = time.perf_counter()
        try:
            published, generation = await self._publish({task_id: data})
        except (BackboneNotReadyError, InvalidTaskIdError, AdapterFileError) as exc:
            return ChangeReply(exc)
        entry = published[task_id]
        summary = summarize(task_id, entry.entry.version, entry.adapter.header)
        reply = await self._spread(ChangeReply(created=entry.created, generation=generation, task=summary))
        if not reply.pending:
            self.metrics.latency.observe(time.perf_counter() - began)
        return reply

    async def register_many(self, files: dict[str, bytes]) -> ChangeReply:
        """`register` for many tasks: every file validated before any is published, one store pass, one
        announcement; answers once every replica serves them all."""
        try:
            published, generation = await self._publish(files)
        except (BackboneNotReadyError, InvalidTaskIdError, AdapterFileError) as exc:
            return ChangeReply(exc)
        tasks = tuple({"task_id": task_id, "version": p.entry.version, "created": p.created, "changed": p.changed}
                      for task_id, p in published.items())
        return await self._spread(ChangeReply(generation=generation, tasks=tasks))

    async def _publish(self, files: dict[str, bytes]) -> tuple[dict[str, Published], int]:
        """Validates and publishes the files, announcing them if any changed; returns the generation every replica
        must reach to serve them (the current one when nothing changed: the live bytes again)."""
        backbone = await self._served_backbone()
        if backbone is None:
            raise BackboneNotReadyError("no replica has loaded the backbone yet: retry in a few seconds")
        published, generation = await self._commit(
            publish_adapters, self.store, backbone, files, self.config.runtime.max_adapter_bytes,
            announce_if=lambda published: any(p.changed for p in published.values()))
        return published, self.feed.generation if generation is None else generation

    async def remove(self, task_id: str) -> ChangeReply:
        try:
            validate_task_id(task_id)
        except InvalidTaskIdError as exc:
            return ChangeReply(exc)
        removed, generation = await self._commit(self.store.remove, task_id)
        if removed is None:
            return ChangeReply(UnknownTaskError(f"task {task_id!r} is not registered"))
        return await self._spread(ChangeReply(generation=generation))

    async def _commit(self, change, *args, announce_if=lambda result: result is not None):
        """(what `change(*args)` returned, the generation announcing it, or None if nothing changed): the store
        change runs in a thread and is announced as soon as it is made, even if the caller has gone meanwhile.
        Serve cancels a request whose HTTP client disconnected, and that cancels this call too: without the
        shield the change would be on disk, but no replica would hear of it until the next one."""

        async def change_and_announce():
            result = await asyncio.to_thread(change, *args)
            return result, (self.feed.announce() if announce_if(result) else None)

        return await asyncio.shield(change_and_announce())

    async def _spread(self, reply: ChangeReply) -> ChangeReply:
        """The reply once every live replica serves the change, or `registration_timeout_s` passed."""
        spread = await self.feed.wait_until_applied(reply.generation, self.config.board.registration_timeout_s)
        return replace(reply, replicas=spread.replicas, pending=spread.pending)

    async def _served_backbone(self) -> BackboneInfo | None:
        """The replicas' backbone; right after a start, waits for the first replica to report it."""
        deadline = time.monotonic() + self.config.board.registration_timeout_s
        while self.backbone is None and time.monotonic() < deadline:
            await self.feed.wait_for_news(deadline - time.monotonic())
        return self.backbone

    # --- replicas ---------------------------------------------------------------------------
    async def heartbeat(self, replica_id: str, applied: int | None, metrics_text: str | None = None,
                        backbone: BackboneInfo | None = None, wait_s: float = 0.0) -> int:
        """A replica's long poll (runtime/change_feed.py), carrying its metrics and, until known, its backbone."""
        if backbone is not None:
            self._learn_backbone(replica_id, backbone)
        if metrics_text is not None:
            self.replica_metrics[replica_id] = metrics_text
        return await self.feed.heartbeat(replica_id, applied, wait_s)

    def _learn_backbone(self, replica_id: str, backbone: BackboneInfo) -> None:
        if self.backbone is None:
            self.backbone = backbone
            self.feed.wake()  # a registration may be waiting for it
        elif backbone.fingerprint != self.backbone.fingerprint:
            log.error("replica %s serves backbone %s..., others %s...", replica_id, backbone.fingerprint[:16],
                      self.backbone.fingerprint[:16])

    async def leave(self, replica_id: str) -> None:
        self.feed.leave(replica_id)

    async def report_metrics(self, process_id: str, metrics_text: str) -> None:
        self.process_metrics[process_id] = (time.monotonic(), metrics_text)

    async def status(self) -> dict:
        """`replicas`: the live ones that serve (a replica beats once before it has loaded the backbone)."""
        return {"replicas": self.feed.serving(), "generation": self.feed.generation, "admin_url": self.admin_url}

    async def metric_texts(self) -> dict[str, str]:
        now = time.monotonic()
        live = self.feed.live()
        self.replica_metrics = {r: text for r, text in self.replica_metrics.items() if r in live}
        texts = {r: text for r, text in self.replica_metrics.items() if text}
        texts[self.process_id] = exposition(self.registry)
        for process_id, (seen_at, text) in list(self.process_metrics.items()):
            if now - seen_at > 60.0:  # an ingress that went away
                del self.process_metrics[process_id]
            else:
                texts[process_id] = text
        return texts
