"""Mixed-task batches: the backbone runs once for the whole batch, each block adds its rows' adapters.

Two ways to compute the adapters of a batch whose rows belong to different tasks:
- "grouped": one dense bottleneck per distinct task, on that task's rows (index_select/index_copy);
- "gathered": every row's weights gathered into (B, r, D) stacks and two batched matmuls (bmm)
  for all rows at once, whatever the task count (the Punica/S-LoRA idea for bottleneck adapters).
`strategy="auto"` uses gathered from `gather_from_tasks` distinct tasks on, grouped below; the
default (None: always grouped) is what `mosaserve bench runtime` measured on CPU, where grouped won
at every task count (BENCHMARKS.md). GPUs are not measured yet.
Rows of the bare backbone (task None) get no adapter and return pooled features instead of logits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters.bottleneck import LAYER_NORM_EPS
from ..adapters.taps import DeltaTap, parallel_mlp_tap, qkv_tap
from .bank import AdapterBank, TaskRecord
from .compute_clock import ComputeClock
from .errors import UnknownTaskError
from .resident import BlockWeights, ResidentAdapter

STRATEGIES = ("auto", "grouped", "gathered")


@dataclass(frozen=True)
class RowResult:
    task_id: str | None
    version: int | None
    output: Tensor  # logits for a task row, pooled features for a bare-backbone row


@dataclass(frozen=True)
class BatchTimings:
    """Measured on the batch itself: task-specific work (adapter branches and heads) vs the rest."""

    total_s: float
    adapter_s: float

    @property
    def backbone_s(self) -> float:
        return max(self.total_s - self.adapter_s, 0.0)


@dataclass(frozen=True)
class TaskGroup:
    adapter: ResidentAdapter
    rows: Tensor  # row indices into the batch


@dataclass(frozen=True)
class BatchPlan:
    """Built once per batch, reused by every block (the index is computed once)."""

    batch_size: int
    groups: tuple[TaskGroup, ...]
    gathered: bool
    has_lora: bool  # any row's task updates qkv (the qkv taps do nothing otherwise)

    def covers_all_rows(self, group: TaskGroup) -> bool:
        return len(self.groups) == 1 and len(group.rows) == self.batch_size


class MixedTaskExecutor:
    def __init__(self, backbone: torch.nn.Module, bank: AdapterBank, strategy: str = "auto",
                 gather_from_tasks: int | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        self.backbone, self.bank = backbone, bank
        self.strategy, self.gather_from_tasks = strategy, gather_from_tasks
        self._plan: BatchPlan | None = None
        self._clock: ComputeClock | None = None
        self._lock = threading.Lock()  # the taps hold per-batch state: one batch at a time
        self._taps: list[DeltaTap] = [
            parallel_mlp_tap(block, self._delta_fn(index)) for index, block in enumerate(backbone.blocks)
        ] + [qkv_tap(block, self._qkv_delta_fn(index)) for index, block in enumerate(backbone.blocks)]

    def close(self) -> None:
        """Detaches the executor from the backbone."""
        for tap in self._taps:
            tap.remove()
        self._taps = []

    def plan(self, task_ids: list[str | None], snapshot: Mapping[str, TaskRecord] | None = None) -> BatchPlan:
        """Resolves every row's task against one snapshot of the bank (all versions consistent)."""
        snapshot = self.bank.snapshot() if snapshot is None else snapshot
        rows_of: dict[str, list[int]] = {}
        for row, task_id in enumerate(task_ids):
            if task_id is None:
                continue
            if task_id not in snapshot:
                raise UnknownTaskError(f"task {task_id!r} is not registered")
            rows_of.setdefault(task_id, []).append(row)
        groups = tuple(TaskGroup(self.bank.resident(snapshot[t]), torch.tensor(r, device=self.bank.device))
                       for t, r in rows_of.items())
        threshold = self.gather_from_tasks
        gathered = self.strategy == "gathered" or (
            self.strategy == "auto" and threshold is not None and len(groups) >= threshold
        )
        return BatchPlan(len(task_ids), groups, gathered, any(g.adapter.qkv for g in groups))

    def run(self, images: Tensor, task_ids: list[str | None],
            snapshot: Mapping[str, TaskRecord] | None = None) -> list[RowResult]:
        """One forward pass for a batch of preprocessed images whose rows name their tasks."""
        return self.run_timed(images, task_ids, snapshot)[0]

    @torch.inference_mode()
    def run_timed(self, images: Tensor, task_ids: list[str | None],
                  snapshot: Mapping[str, TaskRecord] | None = None) -> tuple[list[RowResult], BatchTimings]:
        """`run`, plus the batch's compute time split into task-specific work and the shared backbone."""
        if len(images) != len(task_ids):
            raise ValueError(f"{len(images)} images but {len(task_ids)} task ids")
        plan = self.plan(task_ids, snapshot)
        clock = ComputeClock(self.bank.device)
        with self._lock:
            self._plan, self._clock = plan, clock
            try:
                with clock.section("total"):
                    features = self.backbone(images.to(self.bank.device, self.bank.dtype))
                    with clock.section("adapter"):
                        results = self._heads(plan, features, task_ids)
            finally:
                self._plan, self._clock = None, None
        seconds = clock.seconds()
        return results, BatchTimings(seconds["total"], seconds.get("adapter", 0.0))

    def _heads(self, plan: BatchPlan, features: Tensor, task_ids: list[str | None]) -> list[RowResult]:
        results: list[RowResult | None] = [None] * len(task_ids)
        for group in plan.groups:
            logits = F.linear(features.index_select(0, group.rows), group.adapter.head_weight, group.adapter.head_bias)
            for row, row_logits in zip(group.rows.tolist(), logits):
                results[row] = RowResult(group.adapter.task_id, group.adapter.version, row_logits)
        for row, task_id in enumerate(task_ids):
            if task_id is None:
                results[row] = RowResult(None, None, features[row])
        return results  # type: ignore[return-value]

    def _delta_fn(self, block: int):
        return lambda h: self._block_delta(block, h)

    def _qkv_delta_fn(self, block: int):
        return lambda x: self._qkv_delta(block, x)

    def _qkv_delta(self, block: int, x: Tensor) -> Tensor | None:
        """LoRA rows: each task's low-rank qkv update on its own rows (grouped; LoRA tasks are rarer)."""
        plan, clock = self._plan, self._clock
        if plan is None or clock is None or not plan.has_lora:
            return None
        with clock.section("adapter"):
            return _grouped(plan, x, lambda adapter: adapter.qkv.get(block))

    def _block_delta(self, block: int, h: Tensor) -> Tensor | None:
        plan, clock = self._plan, self._clock
        if plan is None or clock is None or not plan.groups:
            return None
        with clock.section("adapter"):
            if plan.gathered:
                return self._gathered_delta(plan, block, h)
            return _grouped(plan, h, lambda adapter: adapter.blocks.get(block))

    def _gathered_delta(self, plan: BatchPlan, block: int, h: Tensor) -> Tensor | None:
        stacks = gather_block_weights(plan, block, h)
        if stacks is None:
            return None
        rows, norm_w, norm_b, down_w, down_b, up_w, up_b, scale = stacks
        x = h.index_select(0, rows)
        normed = F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS) * norm_w + norm_b
        z = F.gelu(torch.baddbmm(down_b, normed, down_w.transpose(1, 2)))
        delta = scale * torch.baddbmm(up_b, z, up_w.transpose(1, 2))
        out = torch.empty_like(h) if len(rows) == plan.batch_size else torch.zeros_like(h)
        return out.index_copy_(0, rows, delta)


def _grouped(plan: BatchPlan, x: Tensor, weights_of: Callable[[ResidentAdapter], Callable[[Tensor], Tensor] | None]
             ) -> Tensor | None:
    """Each task's delta on its own rows (index_select / index_copy); rows without one stay zero."""
    out = None
    for group in plan.groups:
        weights = weights_of(group.adapter)
        if weights is None:
            continue
        if plan.covers_all_rows(group):
            return weights(x)
        rows = weights(x.index_select(0, group.rows))
        out = x.new_zeros(x.shape[:-1] + rows.shape[-1:]) if out is None else out
        out.index_copy_(0, group.rows, rows)
    return out


def _padded(weights: BlockWeights, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pads a bottleneck to width r with zero units (they add exactly zero: GELU(0) = 0)."""
    extra = r - weights.down_weight.shape[0]
    if extra == 0:
        return weights.down_weight, weights.down_bias, weights.up_weight
    return (F.pad(weights.down_weight, (0, 0, 0, extra)), F.pad(weights.down_bias, (0, extra)),
            F.pad(weights.up_weight, (0, extra)))


def gather_block_weights(plan: BatchPlan, block: int, h: Tensor) -> tuple[Tensor, ...] | None:
    """Per-row weight stacks for one block: rows (R,), then (R, 1, D), (R, r, D), (R, D, r), ..."""
    present = [g for g in plan.groups if block in g.adapter.blocks]
    if not present:
        return None
    r = max(g.adapter.blocks[block].down_weight.shape[0] for g in present)
    counts = torch.tensor([len(g.rows) for g in present], device=h.device)
    rows = torch.cat([g.rows for g in present])

    def per_row(values: list[Tensor]) -> Tensor:
        return torch.stack(values).repeat_interleave(counts, dim=0)

    weights = [g.adapter.blocks[block] for g in present]
    padded = [_padded(w, r) for w in weights]
    return (
        rows,
        per_row([w.norm_weight for w in weights]).unsqueeze(1),
        per_row([w.norm_bias for w in weights]).unsqueeze(1),
        per_row([p[0] for p in padded]),
        per_row([p[1] for p in padded]).unsqueeze(1),
        per_row([p[2] for p in padded]),
        per_row([w.up_bias for w in weights]).unsqueeze(1),
        per_row([torch.tensor(w.scale, device=h.device, dtype=h.dtype) for w in weights]).view(-1, 1, 1),
    )
