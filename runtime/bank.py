"""The adapter bank: every registered task's merged adapter, versioned, swapped atomically.

The task table is copy-on-write: a registration builds a new dict and swaps one reference, so a
batch that took `snapshot()` sees for every task either the old or the new version, never a mix,
and a swap never fails a request already planned.

Two tiers, each least-recently-used: up to `max_resident` adapters on the serving device, and up to
`max_host` in host memory (None: all of them; the merged adapter of ViT-B at r=16 is about 0.3M
parameters, so 10,000 tasks fit). A task registered from a stored file may leave host memory and
is read back from that file (validated again) when a batch next needs it. On a CPU device the two
tiers are the same memory, so a stored task's resident form is its only copy. Tasks restored from
the store are known by their headers until first used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch
from torch import Tensor

from ..adapters.backbone import BackboneInfo
from ..adapters.errors import AdapterFileError, BackboneMismatchError
from ..adapters.file_format import DEFAULT_MAX_BYTES, AdapterFile, AdapterHeader, load_adapter
from .errors import HostCopyLostError
from .resident import SERVING_FORMS, ResidentAdapter, make_resident
from .task_ids import validate_task_id


class HostCopy:
    """A version's tensors in host memory; the host LRU may drop them when the stored file can restore them."""

    def __init__(self, tensors: dict[str, Tensor] | None, source: Path | None) -> None:
        self.tensors: dict[str, Tensor] | None = tensors
        self.source = source


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    version: int
    header: AdapterHeader
    host: HostCopy


def check_servable(header: AdapterHeader, info: BackboneInfo) -> None:
    """Raises unless the adapter runs on this backbone and in mixed batches."""
    if header.backbone.fingerprint != info.fingerprint:
        raise BackboneMismatchError(
            f"adapter was trained on another backbone (fingerprint {header.backbone.fingerprint[:16]}..., "
            f"serving {info.fingerprint[:16]}...)"
        )
    claimed = header.backbone
    if (claimed.depth, claimed.num_features) != (info.depth, info.num_features):
        # The file's tensor shapes follow its header; a header that misdescribes the backbone would
        # pass file validation and only fail at inference.
        raise BackboneMismatchError(
            f"adapter header describes a backbone of {claimed.depth} blocks x {claimed.num_features} features, "
            f"but the served backbone has {info.depth} x {info.num_features}"
        )
    if header.adapter.head.reads_patches and claimed.num_patches != info.num_patches:
        raise BackboneMismatchError(
            f"adapter head reads {claimed.num_patches} patch tokens, but the served backbone has {info.num_patches}"
        )
    if header.adapter.kind not in SERVING_FORMS:
        raise AdapterFileError(f"adapter kind {header.adapter.kind.value!r} is not servable in mixed batches")


class AdapterBank:
    """Every registered task's merged adapter and head by version, on the device and in host memory (LRU)."""

    def __init__(self, info: BackboneInfo, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 max_resident: int = 1024, max_host: int | None = None, max_file_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_resident < 1 or (max_host is not None and max_host < 1):
            raise ValueError("max_resident and max_host must be at least 1")
        self.info, self.device, self.dtype, self.max_resident = info, torch.device(device), dtype, max_resident
        self.max_host, self.max_file_bytes = max_host, max_file_bytes  # the second for files read back
        self._host: OrderedDict[tuple[str, int], HostCopy] = OrderedDict()  # LRU order of the host copies
        self.host_reloads = 0
        self._tasks: Mapping[str, TaskRecord] = MappingProxyType({})
        self._write_lock = threading.Lock()
        self._resident: OrderedDict[tuple[str, int], ResidentAdapter] = OrderedDict()
        self._resident_lock = threading.Lock()
        self.evictions = 0

    def register(self, task_id: str, adapter: AdapterFile, version: int, source: Path | None = None) -> TaskRecord:
        [record] = self._publish([TaskRecord(task_id, version, adapter.header, HostCopy(dict(adapter.tensors), source))])
        self._touch_host(record)
        return record

    def register_stored(self, stored: list[tuple[str, AdapterHeader, int, Path]]) -> list[TaskRecord]:
        """Stored versions (task, header, version, file) known by their headers alone, in one swap of the task
        table: their tensors are read (and validated) on first use, so a replica restoring many tasks is ready
        once it has read their headers."""
        return self._publish([TaskRecord(t, v, header, HostCopy(None, source)) for t, header, v, source in stored])

    def _publish(self, records: list[TaskRecord]) -> list[TaskRecord]:
        for record in records:
            validate_task_id(record.task_id)
            check_servable(record.header, self.info)
        with self._write_lock:
            self._tasks = MappingProxyType({**self._tasks, **{r.task_id: r for r in records}})
        self._evict_tasks({r.task_id for r in records})
        return records

    def remove(self, task_id: str) -> bool:
        with self._write_lock:
            if task_id not in self._tasks:
                return False
            self._tasks = MappingProxyType({t: r for t, r in self._tasks.items() if t != task_id})
        self._evict_tasks({task_id})
        return True

    def _evict_tasks(self, task_ids: set[str]) -> None:
        """Forgets the cached copies of the tasks' older versions (batches in flight keep their own records)."""
        with self._resident_lock:
            for cache in (self._resident, self._host):
                for key in [k for k in cache if k[0] in task_ids]:
                    del cache[key]

    def _touch_host(self, record: TaskRecord) -> None:
        """Marks a host copy as just used; beyond `max_host`, drops the oldest that a file can restore."""
        with self._resident_lock:
            if not self._is_current(record):
                return  # replaced or removed meanwhile (a batch in flight): no cache entry to outlive it
            self._host[(record.task_id, record.version)] = record.host
            self._host.move_to_end((record.task_id, record.version))
            if self.max_host is None:
                return
            held = [c for c in self._host.values() if c.tensors is not None]  # least recently used first
            excess = len(held) - self.max_host
            for host_copy in held:
                if excess <= 0:
                    break
                if host_copy.source is not None:  # copies without a file stay: nothing could restore them
                    host_copy.tensors = None
                    excess -= 1

    def _host_tensors(self, record: TaskRecord) -> dict[str, Tensor]:
        tensors = record.host.tensors
        if tensors is None:  # left host memory: read back and validate the stored file
            try:
                tensors = dict(load_adapter(record.host.source, self.info.fingerprint, self.max_file_bytes).tensors)
            except AdapterFileError as exc:
                if Path(record.host.source).exists():
                    raise  # there but unreadable: damaged, not replaced
                raise HostCopyLostError(f"task {record.task_id!r} v{record.version}: its stored file is gone "
                                        "(replaced or removed in the store since)") from exc
            record.host.tensors = tensors
            self.host_reloads += 1
        self._touch_host(record)
        return tensors

    def snapshot(self) -> Mapping[str, TaskRecord]:
        return self._tasks

    def resident(self, record: TaskRecord) -> ResidentAdapter:
        """The record's adapter on the device, moved there on first use (LRU over max_resident)."""
        key = (record.task_id, record.version)
        with self._resident_lock:
            found = self._resident.get(key)
            if found is not None:
                self._resident.move_to_end(key)
                return found
        adapter = make_resident(record.task_id, record.version, self._host_tensors(record), record.header.adapter,
                                self.info.depth, self.device, self.dtype)
        if self.device.type == "cpu" and record.host.source is not None:
            record.host.tensors = None  # on a CPU the resident form is in host memory already: keep one copy
        with self._resident_lock:
            if not self._is_current(record):
                return adapter  # for the batch in flight that asked, not cached
            self._resident[key] = adapter
            while len(self._resident) > self.max_resident:
                self._resident.popitem(last=False)
                self.evictions += 1
        return adapter

    def _is_current(self, record: TaskRecord) -> bool:
        return self._tasks.get(record.task_id) is record

    def resident_count(self) -> int:
        with self._resident_lock:
            return len(self._resident)

    def host_count(self) -> int:
        """Task versions whose tensors are in host memory now."""
        with self._resident_lock:
            return sum(c.tensors is not None for c in self._host.values())
