"""The training sidecar: a deployment beside the replicas that turns a dataset into a live task.

Jobs run one at a time on a worker thread. On success the merged adapter goes through the same
path as an upload (a replica validates it, publishes it to the store, announces it), and the job
succeeds once every replica serves it. A failure or a cancel publishes nothing: the adapter file
exists only in memory until the atomic publish. Cancelling takes effect at the next epoch end.
Give it its own CPUs or GPU with `trainer_num_cpus` (Ray then places it where they are).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid

import torch
from prometheus_client import CollectorRegistry
from ray import serve

from ..adapters.backbone import load_backbone
from ..adapters.datasets import load_dataset
from ..adapters.task_training import split_for_training, train_task
from ..adapters.training import TrainConfig
from ..runtime.metrics import TrainingMetrics
from .config import ServeConfig
from .metrics_push import report_metrics_forever
from .train_jobs import JobStatus, TrainRequest

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    pass


@serve.deployment
class TrainingSidecar:
    async def __init__(self, config: ServeConfig, replicas, board) -> None:
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.config, self.replicas, self.board = config, replicas, board
        self.jobs: dict[str, JobStatus] = {}
        self._requests: dict[str, TrainRequest] = {}
        self._cancelled: set[str] = set()
        self._queue: queue.Queue[str] = queue.Queue()
        self._backbone = None
        self.registry = CollectorRegistry()
        self.metrics = TrainingMetrics(self.registry)
        process_id = f"trainer-{serve.get_replica_context().replica_id.unique_id}"
        self._reporter = asyncio.get_running_loop().create_task(
            report_metrics_forever(board, process_id, self.registry))
        threading.Thread(target=self._work, name="mosaserve-trainer", daemon=True).start()

    def submit(self, request: TrainRequest) -> dict:
        job = JobStatus(uuid.uuid4().hex[:16], request.task_id, request.method, request.dataset, request.epochs)
        self.jobs[job.job_id], self._requests[job.job_id] = job, request
        self.metrics.jobs.labels("submitted").inc()
        self._queue.put(job.job_id)
        return job.to_dict()

    def status(self, job_id: str) -> dict | None:
        job = self.jobs.get(job_id)
        return job.to_dict() if job else None

    def cancel(self, job_id: str) -> dict | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state == "queued":
            self._finish(job, "cancelled")
        elif job.state == "running":
            self._cancelled.add(job_id)
        return job.to_dict()

    def _work(self) -> None:
        while True:
            job = self.jobs[self._queue.get()]
            if job.state == "queued":
                self._run(job, self._requests.pop(job.job_id))

    def _run(self, job: JobStatus, request: TrainRequest) -> None:
        job.state = "running"
        self.metrics.running.inc()
        try:
            version = self._train_and_register(job, request)
        except JobCancelled:
            self._finish(job, "cancelled")
        except Exception as exc:  # noqa: BLE001 - any failure ends the job, reported on its status
            log.exception("training job %s failed", job.job_id)
            self._finish(job, "failed", f"{type(exc).__name__}: {exc}")
        else:
            job.version = version
            self._finish(job, "succeeded")
        finally:
            self.metrics.running.dec()

    def _train_and_register(self, job: JobStatus, request: TrainRequest) -> int:
        backbone, info = self._load_backbone()
        data = load_dataset(request.dataset, info.input_size[-1])
        began = last = time.monotonic()

        def on_epoch(epoch: int, loss: float) -> None:
            nonlocal last
            now = time.monotonic()
            self.metrics.epoch_seconds.observe(now - last)
            self.metrics.loss.labels(job.task_id).set(loss)
            job.epoch, job.loss, last = epoch + 1, loss, now
            job.eta_s = round((now - began) / job.epoch * (job.epochs - job.epoch), 1)
            if job.job_id in self._cancelled:
                raise JobCancelled()

        cfg = TrainConfig(epochs=request.epochs, lr=request.lr, seed=request.seed)
        train, test = split_for_training(data, request.train_size, request.test_size)
        trained = train_task(backbone, info, train, test, request.method, cfg, on_epoch=on_epoch)
        job.test_accuracy = trained.test_accuracy
        self.metrics.accuracy.labels(job.task_id).set(trained.test_accuracy)
        if job.job_id in self._cancelled:
            raise JobCancelled()
        reply = self.replicas.register.remote(job.task_id, trained.file_bytes).result(timeout_s=300)
        if not reply.ok:
            raise RuntimeError(f"registration refused ({reply.status}): {reply.message}")
        self.board.wait_until_applied.remote(reply.generation, self.config.registration_timeout_s).result(timeout_s=300)
        return reply.task["version"]

    def _load_backbone(self):
        if self._backbone is None:
            self._backbone = load_backbone(self.config.backbone)
        return self._backbone

    def _finish(self, job: JobStatus, state: str, error: str | None = None) -> None:
        job.state, job.error, job.finished_at, job.eta_s = state, error, time.time(), None
        self._cancelled.discard(job.job_id)
        self.metrics.jobs.labels(state).inc()
