"""The serving core without any server: backbone + bank + store + executor + preprocessing.

Registration: validate against the loaded backbone -> publish to the store (atomic, durable) ->
make it visible in the bank. On start every task in the store is registered again by its header
(its tensors load on first use), so nothing acknowledged is lost by a restart and the restart's
time does not grow with the files' bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..adapters.backbone import BackboneSpec, load_backbone
from ..adapters.embedded import EMBEDDED_BACKBONE
from ..adapters.file_format import DEFAULT_MAX_BYTES, read_header
from ..adapters.preprocess import Preprocessor
from ..adapters.errors import AdapterFileError
from .answers import Answer, answer_row
from .bank import AdapterBank, TaskRecord, check_servable
from .errors import HostCopyLostError, NonFiniteOutputError, StoreError, UnknownTaskError
from .device import parse_device, serving_dtype
from .executor import STRATEGIES, BatchTimings, MixedTaskExecutor, RowResult
from .publishing import publish_adapter
from .store import open_store
from .task_ids import BACKBONE_TASK, validate_task_id

log = logging.getLogger(__name__)
RowError = UnknownTaskError | NonFiniteOutputError  # what a row answers instead of an Answer


def setting(default, help: str):
    """A config field with the help text the README's config table is generated from."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RuntimeConfig:
    """The serving core's settings: the backbone, the store, the device and the adapter caches."""

    backbone: BackboneSpec = setting(EMBEDDED_BACKBONE, "the frozen ViT: `embedded`, or a mapping of name, kwargs, "
                                                        "checkpoint (a local safetensors file), seed")
    store_dir: str = setting("out/store", "where published adapters live: a folder, or s3://bucket/prefix "
                                          "(credentials and endpoint from the AWS environment)")
    store_cache_dir: str | None = setting(None, "with an s3:// store, where each replica's machine keeps the files "
                                                "it fetched; null: a folder in the system's temp dir")
    device: str = setting("cpu", "cpu, cuda or cuda:N; on cuda each replica gets a GPU of its own")
    dtype: str = setting("float32", "serving precision: float32, bfloat16 (GPU, or a CPU with AMX) or float16")
    max_resident: int = setting(1024, "adapters kept on the serving device (least recently used leave first)")
    max_host: int | None = setting(None, "adapters kept in host memory; null: all (others are re-read from the store)")
    strategy: str = setting("auto", "how a mixed batch applies its adapters: auto, gathered or grouped")
    # One task: a plain matmul over the whole batch; from two on, gathered, which costs the same at
    # every task count while grouped grows with it (BENCHMARKS.md).
    gather_from_tasks: int | None = setting(2, "with strategy auto, the distinct tasks from which a batch is gathered")
    max_adapter_bytes: int = setting(DEFAULT_MAX_BYTES, "the largest adapter file taken")

    def __post_init__(self) -> None:
        parse_device(self.device)
        serving_dtype(self.dtype)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")


@dataclass
class SyncReport:
    """What one pass of `TaskRuntime.sync` changed in the bank."""

    loaded: list[tuple[str, int, float]] = field(default_factory=list)  # (task, version, its share of the pass's seconds)
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (task, why)


@dataclass(frozen=True)
class BatchOutcome:
    answers: list[Answer | RowError]  # one per row, in order
    timings: BatchTimings | None  # None when no row could run
    distinct_tasks: int


class TaskRuntime:
    """Registers, serves and removes tasks on one loaded backbone, kept equal to the store."""

    def __init__(self, config: RuntimeConfig) -> None:
        self.config = config
        model, self.info = load_backbone(config.backbone)  # fingerprint taken on the float32 weights
        dtype = serving_dtype(config.dtype)
        self.backbone = model.to(config.device, dtype)
        self.preprocess = Preprocessor(self.info)
        self.bank = AdapterBank(self.info, config.device, dtype, config.max_resident, config.max_host,
                                config.max_adapter_bytes)
        self.executor = MixedTaskExecutor(self.backbone, self.bank, config.strategy, config.gather_from_tasks)
        self.store = open_store(config.store_dir, config.store_cache_dir)
        self._changes = threading.RLock()  # register/remove/sync: the bank never goes back to an older version
        self.restored = self.sync()  # every task the store names; `failed` lists those that could not load

    def sync(self) -> SyncReport:
        """Makes the bank serve exactly what the store holds (other processes publish to it too)."""
        report = SyncReport()
        with self._changes:
            entries, current = self.store.entries(), self.bank.snapshot()
            stored, began = [], time.perf_counter()
            for task_id, entry in sorted(entries.items()):
                record = current.get(task_id)
                if record is not None and record.version == entry.version:
                    continue
                try:
                    path = self.store.path_of(entry)
                    header = read_header(path, self.info.fingerprint, self.config.max_adapter_bytes)
                    check_servable(header, self.info)
                except (OSError, AdapterFileError, StoreError) as exc:  # replaced meanwhile, or damaged
                    log.error("could not load task %s v%d from the store: %s", task_id, entry.version, exc)
                    report.failed.append((task_id, str(exc)))
                    continue
                stored.append((task_id, header, entry.version, path))
            self.bank.register_stored(stored)  # one swap of the task table, however many changed
            seconds = (time.perf_counter() - began) / max(1, len(stored))
            report.loaded.extend((task_id, version, seconds) for task_id, _, version, _ in stored)
            for task_id in sorted(current.keys() - entries.keys()):
                self.bank.remove(task_id)
                report.removed.append(task_id)
        return report

    def register(self, task_id: str, data: bytes) -> TaskRecord:
        """Validates an uploaded adapter file, stores it durably, then makes it servable."""
        with self._changes:
            published = publish_adapter(self.store, self.info, task_id, data, self.config.max_adapter_bytes)
            return self.bank.register(task_id, published.adapter, published.entry.version,
                                      self.store.path_of(published.entry))

    def remove(self, task_id: str) -> bool:
        validate_task_id(task_id)
        with self._changes:
            removed = self.store.remove(task_id) is not None
            return self.bank.remove(task_id) or removed

    def tasks(self) -> dict[str, TaskRecord]:
        return dict(self.bank.snapshot())

    def infer(self, images: list[Tensor], task_ids: list[str]) -> list[RowResult]:
        """Decoded uint8 images (C, H, W) and a task id per image (BACKBONE_TASK for the bare backbone)."""
        return self.executor.run(self._batch(images), _rows(task_ids))

    def _batch(self, images: list[Tensor]) -> Tensor:
        return torch.cat([self.preprocess(image) for image in images])

    def serve_batch(self, images: list[Tensor], task_ids: list[str], top_k: list[int],
                    every_class: list[bool] | None = None) -> BatchOutcome:
        """A served batch: rows of unknown tasks answer UnknownTaskError, the others run in one pass (a task
        whose outputs overflow answers NonFiniteOutputError on its own rows only). Rows with `every_class`
        also answer every class's probability."""
        every_class = every_class or [False] * len(images)
        try:
            return self._serve_batch(images, task_ids, top_k, every_class)
        except HostCopyLostError:
            # A version this process still serves, out of host memory, was replaced in the store before its
            # news arrived: catch up with the store now and serve what it holds.
            self.sync()
            return self._serve_batch(images, task_ids, top_k, every_class)

    def _serve_batch(self, images: list[Tensor], task_ids: list[str], top_k: list[int],
                     every_class: list[bool]) -> BatchOutcome:
        snapshot = self.bank.snapshot()
        runnable = [i for i, t in enumerate(task_ids) if t == BACKBONE_TASK or t in snapshot]
        answers: list[Answer | RowError] = [
            UnknownTaskError(f"task {t!r} is not registered") for t in task_ids
        ]
        if not runnable:
            return BatchOutcome(answers, None, 0)
        rows = _rows([task_ids[i] for i in runnable])
        results, timings = self.executor.run_timed(self._batch([images[i] for i in runnable]), rows, snapshot)
        for i, result, output in zip(runnable, results, _on_host([r.output for r in results])):
            record = snapshot.get(task_ids[i])
            try:
                answers[i] = answer_row(task_ids[i], replace(result, output=output),
                                        record.header.labels if record else None, top_k[i], every_class[i])
            except NonFiniteOutputError as exc:
                answers[i] = exc
        return BatchOutcome(answers, timings, len(set(rows)))


def _on_host(outputs: list[Tensor]) -> list[Tensor]:
    """Every row's output on the host in one copy: answering rows on the device would wait for it several
    times per row (softmax, finiteness, top-k, lists)."""
    flat = torch.cat([o.reshape(-1) for o in outputs]).cpu()
    return list(flat.split([o.numel() for o in outputs]))


def _rows(task_ids: list[str]) -> list[str | None]:
    """Executor rows: the bare backbone's task id becomes None (no adapter)."""
    return [None if t == BACKBONE_TASK else t for t in task_ids]
