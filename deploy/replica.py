"""A serving replica: the shared frozen backbone, the adapter bank, and batches that mix tasks.

`@serve.batch` gathers requests of ANY task into one batch (no per-task split), and the runtime runs
the backbone once for all of them. Replicas never accept uploads (the task board does): a background
thread keeps the bank equal to the store, sending heartbeats to the board (each waits there for the
next change, see runtime/change_feed.py) and re-reading the store when the board says something changed.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time

import torch
from prometheus_client import CollectorRegistry
from ray import serve

from ..runtime.answers import Answer
from ..runtime.errors import DeadlineExceededError, InferenceFailedError
from ..runtime.task_ids import BACKBONE_TASK
from ..runtime.task_runtime import BatchOutcome, RowError, SyncReport, TaskRuntime
from .admission import Admission
from .config import ServeConfig
from .messages import PredictItem, RowReply, brief, summarize
from .observability.metrics import BatchMetrics, exposition
from .process import freeze_startup_heap

log = logging.getLogger(__name__)
METRICS_EVERY_S = 1.0  # a heartbeat carries this replica's metrics at most this often
RETRY_AFTER_S = 0.2  # after a failed heartbeat (a board restarting) or sync


@serve.deployment
class TaskReplica:
    """The Serve deployment around a TaskRuntime: batches rows of any task, and keeps its bank equal to the store."""

    async def __init__(self, config: ServeConfig, board) -> None:
        if config.serving.torch_threads:
            torch.set_num_threads(config.serving.torch_threads)
        self.config, self.board = config, board
        self.replica_id = f"replica-{serve.get_replica_context().replica_id.unique_id}"
        self.registry = CollectorRegistry()
        self.metrics = BatchMetrics(self.registry)
        self.admission = Admission()
        # Join the board BEFORE reading the store, so no change announced meanwhile is missed.
        generation = await board.heartbeat.remote(self.replica_id, None, None)
        self.runtime = await asyncio.to_thread(TaskRuntime, config.runtime)
        self.metrics.registered_tasks.set(len(self.runtime.tasks()))
        self.metrics.store_errors.inc(len(self.runtime.restored.failed))
        self.applied = generation
        self._batched.set_max_batch_size(config.serving.max_batch_size)
        self._batched.set_batch_wait_timeout_s(config.serving.batch_wait_timeout_s)
        freeze_startup_heap()  # the backbone, torch and Ray are here to stay: no full collection walks them
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="mosaserve-sync", daemon=True)
        self._syncer.start()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    # --- inference -------------------------------------------------------------------------
    async def predict(self, item: PredictItem) -> RowReply:
        """The row's answer; refused at once if the rows ahead would outlast its deadline."""
        refusal = self.admission.refusal(time.time(), item.deadline)
        if refusal is not None:
            self.metrics.refused.inc()
            return RowReply(refusal, 0.0, 0, self.replica_id, self.admission.rows_per_s)
        self._hold(1)
        try:
            return await self._batched(item)
        except asyncio.CancelledError:  # the caller gave up: Serve's batcher drops the row unless its batch runs
            self.metrics.dropped.labels("deadline_passed" if time.time() >= item.deadline else "client_gone").inc()
            raise
        finally:
            self._hold(-1)

    def _hold(self, rows: int) -> None:
        self.admission.held += rows
        self.metrics.held_rows.set(self.admission.held)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[PredictItem]) -> list[RowReply]:
        started = time.time()
        live = [item for item in items if item.deadline > started]  # the others' callers are giving up now
        served = iter(await self._run(live, started) if live else ())
        return [next(served) if item.deadline > started else self._too_late(item, started) for item in items]

    def _too_late(self, item: PredictItem, started: float) -> RowReply:
        self.metrics.dropped.labels("deadline_passed").inc()
        late = DeadlineExceededError("the request's deadline passed while it waited for a batch; it was not computed")
        return RowReply(late, max(started - item.sent_at, 0.0), 0, self.replica_id)

    async def _run(self, items: list[PredictItem], started: float) -> list[RowReply]:
        try:
            outcome = await asyncio.to_thread(self._serve, items)
        except Exception:  # noqa: BLE001 - one bad row must not fail its batch: retry the rows one by one
            log.exception("batch of %d failed; serving its rows one by one", len(items))
            return [await self._serve_alone(item, started) for item in items]
        self.admission.served(len(items), time.time() - started)
        self._record_batch(items, outcome, started)
        return [self._reply(item, answer, started, len(items)) for item, answer in zip(items, outcome.answers)]

    def _serve(self, items: list[PredictItem]) -> BatchOutcome:
        return self.runtime.serve_batch([i.image for i in items], [i.task_id for i in items], [i.top_k for i in items],
                                        [i.every_class for i in items])

    async def _serve_alone(self, item: PredictItem, started: float) -> RowReply:
        try:
            outcome = await asyncio.to_thread(self._serve, [item])
        except Exception as exc:  # noqa: BLE001 - reported to this request only
            log.exception("request for task %s failed", item.task_id)
            failure = InferenceFailedError(f"inference failed: {type(exc).__name__}")
            return RowReply(failure, 0.0, 1, self.replica_id)
        return self._reply(item, outcome.answers[0], started, 1)

    def _reply(self, item: PredictItem, answer: Answer | RowError, started: float, size: int) -> RowReply:
        return RowReply(answer, max(started - item.sent_at, 0.0), size, self.replica_id, self.admission.rows_per_s)

    def _record_batch(self, items: list[PredictItem], outcome: BatchOutcome, started: float) -> None:
        if outcome.timings is None:
            return
        m = self.metrics
        m.batch_size.observe(len(items))
        m.distinct_tasks.observe(outcome.distinct_tasks)
        m.backbone_seconds.observe(outcome.timings.backbone_s)
        m.adapter_seconds.observe(outcome.timings.adapter_s)
        for item in items:
            m.queue_wait.observe(max(started - item.sent_at, 0.0))
        bank = self.runtime.bank
        m.resident_adapters.set(bank.resident_count())
        m.evictions.set(bank.evictions)
        m.host_adapters.set(bank.host_count())
        m.host_reloads.set(bank.host_reloads)

    # --- the task set ---------------------------------------------------------------------
    async def describe(self, task_id: str) -> dict | None:
        """A registered task as the store holds it now (read through, so never stale)."""
        tasks = await self._synced_tasks()
        if task_id == BACKBONE_TASK:
            return self._backbone_summary()
        record = tasks.get(task_id)
        return summarize(record.task_id, record.version, record.header) if record else None

    async def page(self, after: str | None, limit: int) -> dict:
        """Up to `limit` registered tasks with ids after `after`, in id order, each in brief (the bare backbone
        leads the first page), and `next`: the `after` of the next page, None on the last."""
        tasks = await self._synced_tasks()
        ids = sorted(tasks)
        start = 0 if after is None else bisect.bisect_right(ids, after)
        listed = ids[start : start + limit]
        first = [brief(self._backbone_summary())] if after is None else []
        return {"tasks": first + [brief(summarize(t, tasks[t].version, tasks[t].header)) for t in listed],
                "next": listed[-1] if listed and start + limit < len(ids) else None}

    async def _synced_tasks(self) -> dict:
        report = await asyncio.to_thread(self.runtime.sync)
        self._record_sync(report)
        return self.runtime.tasks()

    def _backbone_summary(self) -> dict:
        info = self.runtime.info
        return {"task_id": BACKBONE_TASK, "version": None, "method": "none", "num_classes": 0, "labels": [],
                "backbone": {"name": info.name, "fingerprint": info.fingerprint}, "output": "embedding",
                "embedding_dim": self.runtime.backbone.num_features}

    # --- keeping up with the store ---------------------------------------------------------
    def _sync_loop(self) -> None:
        metrics_due = 0.0
        while not self._stop.is_set():
            try:
                text, now = None, time.monotonic()
                if now >= metrics_due:
                    text, metrics_due = exposition(self.registry), now + METRICS_EVERY_S
                generation = self._beat(self.applied, text)
                if generation != self.applied:
                    self._record_sync(self.runtime.sync())
                    # The next beat, at once, tells a waiting PUT that this replica caught up.
                    self.applied = generation
            except Exception:  # noqa: BLE001 - the loop must survive a board restart or a bad file
                log.exception("store sync failed; retrying")
                self._stop.wait(RETRY_AFTER_S)

    def _beat(self, applied: int | None, metrics_text: str | None) -> int:
        """From the sync thread (never the event loop): blocks on the board's answer, which comes at the next
        change or after `heartbeat_s`."""
        wait_s = self.config.board.heartbeat_s
        return self.board.heartbeat.remote(self.replica_id, applied, metrics_text, self.runtime.info,
                                           wait_s).result(timeout_s=wait_s + 10)

    def _record_sync(self, report: SyncReport) -> None:
        for _, _, seconds in report.loaded:
            self.metrics.swap_seconds.observe(seconds)
            self.metrics.swaps.labels("register").inc()
        if report.removed:
            self.metrics.swaps.labels("remove").inc(len(report.removed))
        if report.failed:
            self.metrics.store_errors.inc(len(report.failed))
        self.metrics.registered_tasks.set(len(self.runtime.tasks()))
