"""What the service's processes send each other: a prediction row, its reply, a task change's outcome.

Errors travel as the domain exceptions they are (an unknown task, a bad adapter file); the HTTP
layer alone turns them into statuses (deploy/http/errors.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..adapters.config import AdapterKind
from ..adapters.file_format import AdapterHeader
from ..runtime.answers import Answer


@dataclass(frozen=True)
class PredictItem:
    """One image for one task, from the ingress to a replica."""

    image: Tensor  # decoded uint8 (3, H, W)
    task_id: str
    top_k: int
    sent_at: float  # wall clock at the ingress, for the queue wait
    deadline: float  # wall clock after which no answer may leave: the row is dropped, not computed
    every_class: bool = False  # also answer every class's probability (the Open Inference Protocol's output)


@dataclass(frozen=True)
class RowReply:
    """A replica's answer to one row, or why there is none."""

    result: Answer | Exception
    queue_s: float
    batch_size: int
    replica: str  # which replica served the row
    rows_per_s: float | None = None  # the replica's serving rate when it answered (deploy/admission.py)


@dataclass(frozen=True)
class ChangeReply:
    """What a registration or removal did, and which live replicas serve it (`pending`: not yet)."""

    error: Exception | None = None  # why nothing changed
    created: bool = False  # a new task, not a new version of one
    generation: int | None = None  # what every replica must reach to serve the change
    task: dict | None = None
    tasks: tuple[dict, ...] = ()  # a bulk registration's: task_id, version, created, changed
    replicas: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()


def summarize(task_id: str, version: int, header: AdapterHeader) -> dict:
    """A registered task as the HTTP API shows it."""
    return {
        "task_id": task_id,
        "version": version,
        "method": header.adapter.method,
        "r": header.adapter.r if header.adapter.kind is not AdapterKind.HEAD_ONLY else 0,
        "num_classes": header.num_classes,
        "labels": list(header.labels),
        "backbone": {"name": header.backbone.name, "fingerprint": header.backbone.fingerprint},
        "provenance": header.provenance,
    }


def brief(summary: dict) -> dict:
    """A task as the listing shows it (GET /v1/tasks): the rest is on GET /v1/tasks/{id}."""
    return {key: summary[key] for key in ("task_id", "version", "method", "num_classes")}
