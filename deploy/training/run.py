"""One training job's run, resumable: dataset -> training with a checkpoint per epoch -> an adapter file.

A run picks up its job's last checkpoint if there is one (a sidecar stopped during the job) and
continues exactly where it stopped. At every epoch end it saves the checkpoint, then the job's
record; the checkpoint comes first, so a record never claims an epoch that is not saved. The
adapter file it returns exists only in memory: publishing is the caller's step, after training
has finished and the file has been validated. No Ray here, so it runs and is tested without it.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable

from torch import nn

from ...adapters.backbone import BackboneInfo
from ...adapters.datasets import load_dataset
from ...adapters.image_dataset import ImageDataset
from ...adapters.errors import TrainStateError
from ...adapters.task_training import TrainedTask, split_for_training, train_task
from ...adapters.train_state import TrainState
from ...adapters.training import TrainConfig
from .records import JobRecords
from .jobs import JobStatus, TrainRequest


class JobCancelled(Exception):
    """A cancel was requested; the run stopped at an epoch end and publishes nothing."""


class JobResumeError(Exception):
    """An interrupted job cannot continue: its checkpoint or its dataset is unusable."""


def dataset_sha256(train: ImageDataset, test: ImageDataset) -> str:
    digest = hashlib.sha256()
    for part in (train, test):
        digest.update(repr(part.class_names).encode())
        digest.update(part.images.contiguous().numpy().tobytes())
        digest.update(part.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_job(job: JobStatus, request: TrainRequest, records: JobRecords, backbone: nn.Module, info: BackboneInfo,
            on_epoch_end: Callable[[float, float], None] | None = None) -> TrainedTask:
    """Trains (or resumes) the job's adapter. `on_epoch_end(seconds, loss)` is for metrics."""
    resume = _checkpoint_to_resume(job, records)
    train, test = _load_split(job, request, info, resuming=resume is not None)
    cfg = TrainConfig(epochs=request.epochs, lr=request.lr, seed=request.seed)
    job.epochs = cfg.epochs_for(len(train))  # the default schedule gives a small dataset more epochs
    records.save(request, job)

    def save_checkpoint(state: TrainState) -> None:
        records.save_checkpoint(job.job_id, state)

    on_epoch = _epoch_end_handler(job, request, records, on_epoch_end)
    trained = train_task(backbone, info, train, test, request.method, cfg, on_epoch=on_epoch, resume=resume,
                         on_checkpoint=save_checkpoint, head=request.head)
    job.test_accuracy = trained.test_accuracy
    records.save(request, job)
    return trained


def _checkpoint_to_resume(job: JobStatus, records: JobRecords) -> TrainState | None:
    if job.restarts == 0:
        return None  # never interrupted: any file there is not this run's
    try:
        state = records.load_checkpoint(job.job_id)
    except TrainStateError as exc:
        raise JobResumeError(f"cannot resume: {exc}") from exc
    job.resumed_from_epoch = state.epochs_done if state else 0
    job.epoch = job.resumed_from_epoch
    return state


def _load_split(job: JobStatus, request: TrainRequest, info: BackboneInfo,
                resuming: bool) -> tuple[ImageDataset, ImageDataset]:
    try:
        data = load_dataset(request.dataset, info.input_size[-1])
    except Exception as exc:  # noqa: BLE001 - a fresh job reports the loader's own error
        if resuming:
            raise JobResumeError(f"cannot resume: dataset {request.dataset!r} is gone or unreadable "
                                 f"({type(exc).__name__}: {exc})") from exc
        raise
    train, test = split_for_training(data, request.train_size, request.test_size)
    fingerprint = dataset_sha256(train, test)
    if resuming and job.dataset_sha256 not in (None, fingerprint):
        raise JobResumeError(f"cannot resume: dataset {request.dataset!r} changed since the job started "
                             f"(sha256 {fingerprint[:12]}..., was {job.dataset_sha256[:12]}...)")
    job.dataset_sha256 = fingerprint
    return train, test


def _epoch_end_handler(job: JobStatus, request: TrainRequest, records: JobRecords,
                       on_epoch_end: Callable[[float, float], None] | None) -> Callable[[int, float], None]:
    began = last = time.monotonic()
    first_epoch = job.epoch

    def on_epoch(epoch: int, loss: float) -> None:
        nonlocal last
        now = time.monotonic()
        if on_epoch_end is not None:
            on_epoch_end(now - last, loss)
        job.epoch, job.loss, last = epoch + 1, loss, now
        job.eta_s = round((now - began) / (job.epoch - first_epoch) * (job.epochs - job.epoch), 1)
        records.save(request, job)
        if job.cancel_requested:
            raise JobCancelled()

    return on_epoch
