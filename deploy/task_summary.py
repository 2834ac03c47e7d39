"""A registered task as the HTTP API shows it."""

from __future__ import annotations

from ..runtime.bank import TaskRecord


def summarize(record: TaskRecord) -> dict:
    header = record.header
    return {
        "task_id": record.task_id,
        "version": record.version,
        "method": header.adapter.method,
        "r": header.adapter.r if header.adapter.kind != "head_only" else 0,
        "num_classes": header.num_classes,
        "labels": list(header.labels),
        "backbone": {"name": header.backbone.name, "fingerprint": header.backbone.fingerprint},
        "provenance": header.provenance,
    }
