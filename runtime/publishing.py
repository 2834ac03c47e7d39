"""Accepting an uploaded adapter file: validate it against the served backbone, then publish it durably.

It needs the backbone's description (BackboneInfo), not its weights, so the process that accepts
uploads need not be one that serves: in the served application it is the task board, which keeps
validation and file writes off the serving replicas' cores and interpreter lock.
"""

from __future__ import annotations

from ..adapters.backbone import BackboneInfo
from ..adapters.file_format import DEFAULT_MAX_BYTES, AdapterFile, load_adapter
from .bank import check_servable
from .store import AdapterStore, StoreEntry
from .task_ids import validate_task_id


def publish_adapter(store: AdapterStore, info: BackboneInfo, task_id: str, data: bytes,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[StoreEntry, AdapterFile]:
    """Raises (InvalidTaskIdError, AdapterFileError) before anything is written; else the new version."""
    validate_task_id(task_id)
    adapter = load_adapter(data, info.fingerprint, max_bytes)
    check_servable(adapter, info)
    return store.publish(task_id, data), adapter
