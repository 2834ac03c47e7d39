"""Accepting an uploaded adapter file: validate it against the served backbone, then publish it durably.

It needs the backbone's description (BackboneInfo), not its weights, so the process that accepts
uploads need not be one that serves: in the served application it is the task board, which keeps
validation and file writes off the serving replicas' cores and interpreter lock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..adapters.backbone import BackboneInfo
from ..adapters.file_format import DEFAULT_MAX_BYTES, AdapterFile, load_adapter
from ..adapters.errors import AdapterFileError
from .bank import check_servable
from .errors import InvalidTaskIdError
from .manifest import Store, StoreEntry
from .task_ids import validate_task_id


@dataclass(frozen=True)
class Published:
    entry: StoreEntry  # the live version now
    adapter: AdapterFile
    created: bool  # the task had no version before
    changed: bool  # False: the bytes of the live version again, nothing written


def publish_adapter(store: Store, info: BackboneInfo, task_id: str, data: bytes,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> Published:
    """Raises (InvalidTaskIdError, AdapterFileError) before anything is written; else the live version."""
    return publish_adapters(store, info, {task_id: data}, max_bytes)[task_id]


def publish_adapters(store: Store, info: BackboneInfo, files: dict[str, bytes],
                     max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Published]:
    """Every file validated before any is written, then all published in one store pass. An invalid one
    raises its error, naming its task where there are several, and nothing is written."""
    adapters = {task_id: _validated(task_id, data, info, max_bytes, named=len(files) > 1)
                for task_id, data in files.items()}
    changes = store.publish_changes(files)
    return {task_id: Published(entry, adapters[task_id], previous is None, previous != entry)
            for task_id, (previous, entry) in changes.items()}


def _validated(task_id: str, data: bytes, info: BackboneInfo, max_bytes: int, named: bool) -> AdapterFile:
    try:
        validate_task_id(task_id)
        adapter = load_adapter(data, info.fingerprint, max_bytes)
        check_servable(adapter.header, info)
    except (InvalidTaskIdError, AdapterFileError) as exc:
        if named:
            exc.args = (f"task {task_id!r}: {exc}",)
        raise
    return adapter
