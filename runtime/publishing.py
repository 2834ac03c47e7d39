"""Accepting an uploaded adapter file: validate it against the served backbone, then publish it durably.

It needs the backbone's description (BackboneInfo), not its weights, so the process that accepts
uploads need not be one that serves: in the served application it is the task board, which keeps
validation and file writes off the serving replicas' cores and interpreter lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..adapters.backbone import BackboneInfo
from ..adapters.file_format import DEFAULT_MAX_BYTES, AdapterFile, load_adapter
from .bank import check_servable
from .store import AdapterStore, StoreEntry
from .task_ids import validate_task_id


@dataclass(frozen=True)
class Published:
    entry: StoreEntry  # the live version now
    adapter: AdapterFile
    created: bool  # the task had no version before
    changed: bool  # False: the bytes of the live version again, nothing written


def publish_adapter(store: AdapterStore, info: BackboneInfo, task_id: str, data: bytes,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> Published:
    """Raises (InvalidTaskIdError, AdapterFileError) before anything is written; else the live version."""
    validate_task_id(task_id)
    adapter = load_adapter(data, info.fingerprint, max_bytes)
    check_servable(adapter, info)
    previous, entry = store.publish_change(task_id, data)
    return Published(entry, adapter, previous is None, previous != entry)
