"""Training jobs as the API sees them: a validated request and a status that moves through states.

A job's status also says what happened to it across sidecar restarts: how often a restart found it
unfinished (`restarts`) and the epoch its run resumed from (`resumed_from_epoch`, 0 when no
checkpoint was written yet). A cancel is part of the status, so it survives a restart too.

Dataset references from a request are never arbitrary paths: a built-in name, or `folder:REL` /
`list:REL` relative to the configured `datasets_root` (and staying inside it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ...adapters.config import HEADS, METHODS
from ...adapters.datasets import BUILTIN_DATASETS
from ...adapters.train_config import TRAIN_DEFAULTS
from ...runtime.task_ids import validate_task_id

MAX_TRAIN_REQUEST_BYTES = 64 * 1024  # a POST /v1/train body: a small JSON document


class TrainRequestError(ValueError):
    """A training request that cannot be run as sent."""


LIMITS = {"epochs": (1, 1000), "train_size": (2, 1_000_000), "test_size": (1, 1_000_000), "seed": (0, 2**31 - 1)}


@dataclass(frozen=True)
class TrainRequest:
    task_id: str
    dataset: str  # resolved: a built-in name, or folder:/abs/path, list:/abs/path
    method: str = "mosa"
    head: str | None = None  # None: AdapterConfig's default
    epochs: int | None = None  # None: the default schedule (TrainConfig)
    train_size: int = 1000
    test_size: int = 200
    lr: float = TRAIN_DEFAULTS.lr
    seed: int = TRAIN_DEFAULTS.seed


@dataclass
class JobStatus:
    job_id: str
    task_id: str
    method: str
    dataset: str
    epochs: int | None  # as asked; once running, the epochs the job takes
    state: str = "queued"  # queued -> running -> succeeded | failed | cancelled
    epoch: int = 0
    loss: float | None = None
    test_accuracy: float | None = None
    eta_s: float | None = None
    version: int | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    cancel_requested: bool = False  # a running job stops at its next epoch end
    restarts: int = 0  # times a sidecar stopped while this job ran (it was resumed each time)
    resumed_from_epoch: int | None = None  # where the latest resumed run started; None: never interrupted
    dataset_sha256: str | None = None  # of the split it trains and tests on; a resumed run must see the same

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FINISHED_STATES = ("succeeded", "failed", "cancelled")


def status_after_restart(job: JobStatus, max_restarts: int) -> JobStatus:
    """What a restarted sidecar makes of a job its predecessor left: finished jobs stay as they were,
    a queued one waits again, a running one is queued to resume unless it was being cancelled or has
    already been interrupted `max_restarts` times (a job that keeps killing the sidecar must end)."""
    if job.finished or job.state == "queued":
        return job
    if job.cancel_requested:
        return replace(job, state="cancelled", finished_at=time.time(), eta_s=None)
    if job.restarts >= max_restarts:
        reason = f"the training sidecar stopped {job.restarts + 1} times while this job ran; not resumed again"
        return replace(job, state="failed", finished_at=time.time(), eta_s=None, error=reason)
    return replace(job, state="queued", restarts=job.restarts + 1, eta_s=None)


def parse_train_request(doc: Any, datasets_root: str | None) -> TrainRequest:
    if not isinstance(doc, dict):
        raise TrainRequestError("the body must be a JSON object with task_id and dataset")
    unknown = set(doc) - {f for f in TrainRequest.__dataclass_fields__}
    if unknown or "task_id" not in doc or "dataset" not in doc:
        raise TrainRequestError(f"needs task_id and dataset; optional: method, head, epochs, train_size, test_size, lr, seed"
                            f"{'; unknown: ' + str(sorted(unknown)) if unknown else ''}")
    validate_task_id(doc["task_id"])
    if doc.get("method", "mosa") not in METHODS:
        raise TrainRequestError(f"method must be one of {METHODS}")
    if doc.get("head", HEADS[0]) not in HEADS:
        raise TrainRequestError(f"head must be one of {HEADS}")
    for name, (low, high) in LIMITS.items():
        if name not in doc:
            continue
        value = doc[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise TrainRequestError(f"{name} must be an integer from {low} to {high}")
    lr = doc.get("lr", TRAIN_DEFAULTS.lr)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0 < lr <= 1:
        raise TrainRequestError("lr must be a number in (0, 1]")
    return TrainRequest(**{**doc, "dataset": resolve_dataset(doc["dataset"], datasets_root), "lr": float(lr)})


def resolve_dataset(reference: Any, datasets_root: str | None) -> str:
    if not isinstance(reference, str):
        raise TrainRequestError("dataset must be a string")
    if reference in BUILTIN_DATASETS:
        return reference
    kind, _, relative = reference.partition(":")
    if kind not in ("folder", "list") or not relative:
        raise TrainRequestError(f"dataset must be one of {sorted(BUILTIN_DATASETS)}, folder:PATH or list:PATH")
    if datasets_root is None:
        raise TrainRequestError("file datasets are disabled: set datasets_root in the config")
    if "\0" in relative:
        raise TrainRequestError("dataset path must not contain a NUL byte")
    root = Path(datasets_root).resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root):
        raise TrainRequestError(f"dataset path {relative!r} must be relative to datasets_root and stay inside it")
    return f"{kind}:{path}"
