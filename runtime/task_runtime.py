"""The serving core without any server: backbone + bank + store + executor + preprocessing.

Registration: validate against the loaded backbone -> publish to the store (atomic, durable) ->
make it visible in the bank. On start every task in the store is registered again, so nothing
acknowledged is lost by a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..adapters.backbone import BackboneSpec, load_backbone
from ..adapters.file_format import DEFAULT_MAX_BYTES, load_adapter
from ..adapters.preprocess import Preprocessor
from .bank import AdapterBank, TaskRecord
from .executor import MixedTaskExecutor, RowResult
from .store import AdapterStore
from .task_ids import BACKBONE_TASK, validate_task_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeConfig:
    backbone: BackboneSpec
    store_dir: str
    device: str = "cpu"
    dtype: str = "float32"  # "bfloat16" on a GPU
    max_resident: int = 1024
    strategy: str = "auto"
    gather_from_tasks: int | None = None  # None: always grouped (measured faster on CPU)
    max_adapter_bytes: int = DEFAULT_MAX_BYTES


class TaskRuntime:
    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        model, self.info = load_backbone(config.backbone)  # fingerprint taken on the float32 weights
        dtype = getattr(torch, config.dtype)
        self.backbone = model.to(config.device, dtype)
        self.preprocess = Preprocessor(self.info)
        self.bank = AdapterBank(self.info, config.device, dtype, config.max_resident)
        self.executor = MixedTaskExecutor(self.backbone, self.bank, config.strategy, config.gather_from_tasks)
        self.store = AdapterStore(config.store_dir)
        self.restore()

    def restore(self) -> list[str]:
        """Registers every task the store's manifest names; returns the task ids restored."""
        restored = []
        for task_id, entry in sorted(self.store.entries().items()):
            adapter = load_adapter(self.store.path_of(entry), self.info.fingerprint, self.config.max_adapter_bytes)
            self.bank.register(task_id, adapter, entry.version)
            restored.append(task_id)
        return restored

    def register(self, task_id: str, data: bytes) -> TaskRecord:
        """Validates an uploaded adapter file, stores it durably, then makes it servable."""
        validate_task_id(task_id)
        adapter = load_adapter(data, self.info.fingerprint, self.config.max_adapter_bytes)
        self.bank.check(adapter)
        entry = self.store.publish(task_id, data)
        return self.bank.register(task_id, adapter, entry.version)

    def remove(self, task_id: str) -> bool:
        validate_task_id(task_id)
        removed = self.store.remove(task_id) is not None
        return self.bank.remove(task_id) or removed

    def tasks(self) -> dict[str, TaskRecord]:
        return dict(self.bank.snapshot())

    def infer(self, images: list[Tensor], task_ids: list[str]) -> list[RowResult]:
        """Decoded uint8 images (C, H, W) and a task id per image (BACKBONE_TASK for the bare backbone)."""
        batch = torch.cat([self.preprocess(image) for image in images])
        rows = [None if t == BACKBONE_TASK else t for t in task_ids]
        return self.executor.run(batch, rows)
