"""The adapter bank: every registered task's merged adapter, versioned, swapped atomically.

The task table is copy-on-write: a registration builds a new dict and swaps one reference, so a
batch that took `snapshot()` sees for every task either the old or the new version, never a mix,
and a swap never fails a request already planned. Adapters live in host memory (the merged
adapter of ViT-B at r=16 is about 0.3M parameters, so 10,000 tasks fit) and up to
`max_resident` of them also on the serving device, least recently used evicted first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import torch
from torch import Tensor

from ..adapters.backbone import BackboneInfo
from ..adapters.errors import AdapterFileError, BackboneMismatchError
from ..adapters.file_format import AdapterFile, AdapterHeader
from .resident import ResidentAdapter, make_resident
from .task_ids import validate_task_id

SERVABLE_KINDS = ("bottleneck", "head_only")


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    version: int
    header: AdapterHeader
    tensors: dict[str, Tensor]  # host copy, the merged adapter and head


class AdapterBank:
    def __init__(self, info: BackboneInfo, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 max_resident: int = 1024) -> None:
        if max_resident < 1:
            raise ValueError("max_resident must be at least 1")
        self.info, self.device, self.dtype, self.max_resident = info, torch.device(device), dtype, max_resident
        self._tasks: Mapping[str, TaskRecord] = MappingProxyType({})
        self._write_lock = threading.Lock()
        self._resident: OrderedDict[tuple[str, int], ResidentAdapter] = OrderedDict()
        self._resident_lock = threading.Lock()
        self.evictions = 0

    def check(self, adapter: AdapterFile) -> None:
        """Raises unless the adapter runs on this bank's backbone and kind of executor."""
        if adapter.header.backbone.fingerprint != self.info.fingerprint:
            raise BackboneMismatchError(
                f"adapter was trained on another backbone (fingerprint {adapter.header.backbone.fingerprint[:16]}..., "
                f"serving {self.info.fingerprint[:16]}...)"
            )
        if adapter.header.adapter.kind not in SERVABLE_KINDS:
            raise AdapterFileError(
                f"method {adapter.header.adapter.method!r} is not servable in mixed batches; serve MoSA, adapter or linear"
            )

    def register(self, task_id: str, adapter: AdapterFile, version: int) -> TaskRecord:
        validate_task_id(task_id)
        self.check(adapter)
        record = TaskRecord(task_id, version, adapter.header, dict(adapter.tensors))
        with self._write_lock:
            self._tasks = MappingProxyType({**self._tasks, task_id: record})
        self._evict_task(task_id)  # a re-registered task may reuse a version number
        return record

    def remove(self, task_id: str) -> bool:
        with self._write_lock:
            if task_id not in self._tasks:
                return False
            self._tasks = MappingProxyType({t: r for t, r in self._tasks.items() if t != task_id})
        self._evict_task(task_id)
        return True

    def _evict_task(self, task_id: str) -> None:
        """Drops the device copies of a task's older versions (batches in flight keep their own)."""
        with self._resident_lock:
            for key in [k for k in self._resident if k[0] == task_id]:
                del self._resident[key]

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
        cfg = record.header.adapter
        adapter = make_resident(record.task_id, record.version, record.tensors,
                                cfg.resolve_blocks(self.info.depth), cfg.scale, self.device, self.dtype)
        with self._resident_lock:
            self._resident[key] = adapter
            while len(self._resident) > self.max_resident:
                self._resident.popitem(last=False)
                self.evictions += 1
        return adapter

    def resident_count(self) -> int:
        with self._resident_lock:
            return len(self._resident)
