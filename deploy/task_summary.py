"""A registered task as the HTTP API shows it."""

from __future__ import annotations

from ..adapters.file_format import AdapterHeader


def summarize(task_id: str, version: int, header: AdapterHeader) -> dict:
    return {
        "task_id": task_id,
        "version": version,
        "method": header.adapter.method,
        "r": header.adapter.r if header.adapter.kind != "head_only" else 0,
        "num_classes": header.num_classes,
        "labels": list(header.labels),
        "backbone": {"name": header.backbone.name, "fingerprint": header.backbone.fingerprint},
        "provenance": header.provenance,
    }
