"""The training sidecar: a deployment beside the replicas that turns a dataset into a live task.

Jobs run one at a time on a worker thread. On success the merged adapter goes through the same
path as an upload (the task board validates it, publishes it to the store, announces it), and the job
succeeds once every replica serves it. A failure or a cancel publishes nothing: the adapter file
exists only in memory until the atomic publish. Cancelling takes effect at the next epoch end; a
job past its last epoch is not cancelled (it answers cancel_requested false and goes live).

Jobs outlive the sidecar (deploy/training/records.py): every job's record and its last checkpoint
are on disk, so when Serve restarts a sidecar that crashed or was killed, the new one lists finished
jobs again, queues the waiting ones and resumes the interrupted one from its last epoch end. A job
that cannot resume (checkpoint damaged, dataset gone or changed) fails with the reason.
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

from ...adapters.backbone import load_backbone
from ...adapters.task_training import TrainedTask
from ..observability.metrics import TrainingMetrics
from ..config import ServeConfig
from ..observability.metrics import report_metrics_forever
from ..process import background_torch_threads, yield_to_serving
from .records import JobRecord, JobRecords
from .run import JobCancelled, run_job
from .jobs import JobStatus, TrainRequest, status_after_restart

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # a job interrupted this often is failed rather than resumed again
KEEP_FINISHED = 1000  # finished jobs' records kept across restarts, newest first
OWNERSHIP_TIMEOUT_S = 60.0  # how long a new sidecar waits for an old one to let go of jobs_dir


@serve.deployment
class TrainingSidecar:
    async def __init__(self, config: ServeConfig, board) -> None:
        torch.set_num_threads(config.serving.torch_threads or background_torch_threads())
        self.config, self.board = config, board
        self.jobs: dict[str, JobStatus] = {}
        self._requests: dict[str, TrainRequest] = {}
        self._queue: queue.Queue[str] = queue.Queue()
        # A job's state moves on the worker thread and, for a cancel, on Serve's thread pool: one at a time,
        # so a cancel never interleaves with a job's start or end (and its record on disk with theirs).
        self._transitions = threading.RLock()
        self._backbone = None
        self.registry = CollectorRegistry()
        self.metrics = TrainingMetrics(self.registry)
        self.records = JobRecords(config.resolved_jobs_dir())
        await asyncio.to_thread(self.records.take_ownership, OWNERSHIP_TIMEOUT_S)
        await asyncio.to_thread(self._restore_jobs)
        process_id = f"trainer-{serve.get_replica_context().replica_id.unique_id}"
        self._reporter = asyncio.get_running_loop().create_task(
            report_metrics_forever(board, process_id, self.registry))
        threading.Thread(target=self._work, name="mosaserve-trainer", daemon=True).start()

    # --- after a restart ---------------------------------------------------------------------
    def _restore_jobs(self) -> None:
        """Finished jobs are listed again, waiting and interrupted ones queued again, oldest first."""
        records = self.records.load_all()
        finished = [r for r in records if r.status.finished]
        for old in sorted(finished, key=lambda r: r.status.finished_at or 0)[:-KEEP_FINISHED]:
            self.records.forget(old.status.job_id)
            records.remove(old)
        for record in records:
            self._restore(record)

    def _restore(self, record: JobRecord) -> None:
        job = status_after_restart(record.status, MAX_RESTARTS)
        self.jobs[job.job_id], self._requests[job.job_id] = job, record.request
        if job != record.status:
            self.records.save(record.request, job)
            log.warning("training job %s was %s when the sidecar stopped: now %s", job.job_id,
                        record.status.state, job.state)
        if job.finished:
            self.records.drop_checkpoint(job.job_id)  # a crash may have come between finishing and deleting
        else:
            self._queue.put(job.job_id)

    # --- the API -----------------------------------------------------------------------------
    def submit(self, request: TrainRequest) -> dict:
        job = JobStatus(uuid.uuid4().hex[:16], request.task_id, request.method, request.dataset, request.epochs)
        self.records.save(request, job)  # on disk before it is acknowledged
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
        with self._transitions:
            if job.state == "queued":
                self._finish(job, "cancelled")
            elif job.state == "running" and not job.cancel_requested and (job.epochs is None or job.epoch < job.epochs):
                # Past its last epoch the job is being evaluated and registered: it goes live, and says so by
                # leaving cancel_requested false rather than promising a cancel it would not make.
                job.cancel_requested = True
                self.records.save(self._requests[job_id], job)  # a restart in between still cancels
            return job.to_dict()

    # --- the worker --------------------------------------------------------------------------
    def _work(self) -> None:
        yield_to_serving()  # this thread trains: the replicas beside it keep the cores they need
        while True:
            job = self.jobs[self._queue.get()]
            with self._transitions:
                if job.state != "queued":
                    continue
                job.state = "running"
            try:
                self._run(job, self._requests[job.job_id])
            except Exception:  # noqa: BLE001 - e.g. a full disk while finishing: the worker must live on
                log.exception("training job %s could not be finished cleanly", job.job_id)

    def _run(self, job: JobStatus, request: TrainRequest) -> None:
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
        trained = run_job(job, request, self.records, backbone, info, on_epoch_end=self._observe_epoch(job))
        self.metrics.accuracy.labels(job.task_id).set(trained.test_accuracy)
        with self._transitions:  # a cancel lands before this, or sees the last epoch done and is refused
            if job.cancel_requested:
                raise JobCancelled()
        return self._register(job, trained)

    def _observe_epoch(self, job: JobStatus):
        def observe(seconds: float, loss: float) -> None:
            self.metrics.epoch_seconds.observe(seconds)
            self.metrics.loss.labels(job.task_id).set(loss)

        return observe

    def _register(self, job: JobStatus, trained: TrainedTask) -> int:
        """As an upload: validated, published atomically, announced; answered once every replica serves it."""
        reply = self.board.register.remote(job.task_id, trained.file_bytes).result(timeout_s=300)
        if reply.error is not None:
            raise RuntimeError(f"registration refused ({type(reply.error).__name__}): {reply.error}")
        return reply.task["version"]

    def _load_backbone(self):
        if self._backbone is None:
            self._backbone = load_backbone(self.config.runtime.backbone)
        return self._backbone

    def _finish(self, job: JobStatus, state: str, error: str | None = None) -> None:
        with self._transitions:
            job.state, job.error, job.finished_at, job.eta_s = state, error, time.time(), None
            self.records.save(self._requests[job.job_id], job)  # finished on disk first, then its checkpoint goes
        self.records.drop_checkpoint(job.job_id)
        self.metrics.jobs.labels(state).inc()
