"""Mixed-task batches: the backbone runs once for the whole batch, each block adds its rows' adapters.

Each block normalises the batch once (the adapters' LayerNorm affine is folded into their Down
projection, see `FoldedBottlenecks`), then computes the adapters of its rows one of two ways:
- "grouped": one dense bottleneck per distinct task, on that task's rows, added in place
  (index_add_; a task that has every row of the batch adds with one in-place matmul);
- "gathered": every row's weights stacked in batch order when the batch is planned, and two batched
  matmuls (bmm) for all rows at once, the second accumulating into the block's output in place
  (the Punica/S-LoRA idea for bottleneck adapters). Rows without an adapter get zero weights.
`strategy="auto"` uses gathered from `gather_from_tasks` distinct tasks on, grouped below (None:
always grouped). `mosaserve bench runtime` measures both (BENCHMARKS.md).
Each task's head reads the final tokens (`TokenMapWeights`, normalised once for the batch) or, for
format 1 files, the backbone's pooled features. Rows of the bare backbone (task None) get no adapter
and return pooled features instead of logits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters.bottleneck import LAYER_NORM_EPS
from ..adapters.config import Head
from ..adapters.heads import middle_block
from ..adapters.taps import OutputCapture, Tap, parallel_mlp_tap, qkv_tap
from .bank import AdapterBank, TaskRecord
from .compute_clock import ComputeClock
from .errors import UnknownTaskError
from .resident import FoldedBottlenecks, ResidentAdapter

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
    adapter_s: float  # adapter branches and heads
    head_s: float = 0.0  # the heads alone (part of adapter_s)

    @property
    def backbone_s(self) -> float:
        return max(self.total_s - self.adapter_s, 0.0)


@dataclass(frozen=True)
class TaskGroup:
    adapter: ResidentAdapter
    rows: Tensor  # row indices into the batch, on the device
    rows_on_host: tuple[int, ...]  # the same: reading `rows` back would wait for the device once per group


@dataclass(frozen=True)
class RowStacks:
    """Every row's folded bottleneck weights, the batch on dim 1 so that each block's slice is contiguous."""

    down: Tensor  # (L, B, D, r)
    down_bias: Tensor  # (L, B, 1, r)
    up: Tensor  # (L, B, r + 1, D)


@dataclass(frozen=True)
class BatchPlan:
    """Built once per batch, reused by every block (the index is computed once)."""

    batch_size: int
    groups: tuple[TaskGroup, ...]
    adapted_blocks: frozenset[int]  # blocks where some row has a bottleneck adapter
    row_stacks: RowStacks | None  # the gathered strategy's weights; None: grouped
    has_lora: bool  # any row's task updates qkv (the qkv taps do nothing otherwise)

    def covers_all_rows(self, group: TaskGroup) -> bool:
        return len(self.groups) == 1 and len(group.rows) == self.batch_size


class MixedTaskExecutor:
    """Runs one batch of rows of any tasks: the backbone once, each row's adapter and head beside it."""

    def __init__(self, backbone: torch.nn.Module, bank: AdapterBank, strategy: str = "auto",
                 gather_from_tasks: int | None = 2) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}")
        self.backbone, self.bank = backbone, bank
        self.strategy, self.gather_from_tasks = strategy, gather_from_tasks
        self._plan: BatchPlan | None = None
        self._clock: ComputeClock | None = None
        self._lock = threading.Lock()  # the taps hold per-batch state: one batch at a time
        # The adapters' affine is folded into their weights, so they normalise with weight one; passed
        # explicitly because PyTorch's CPU LayerNorm without a weight takes a path twice as slow.
        self._unit_scale = torch.ones(backbone.num_features, device=bank.device, dtype=bank.dtype)
        self._taps: list[Tap] = [
            parallel_mlp_tap(block, self._block_update_fn(index)) for index, block in enumerate(backbone.blocks)
        ] + [qkv_tap(block, self._qkv_update_fn(index)) for index, block in enumerate(backbone.blocks)]
        # After the taps, so the middle block's output is read with every row's adapter applied.
        self._middle = OutputCapture(backbone.blocks[middle_block(len(backbone.blocks))])

    def close(self) -> None:
        """Detaches the executor from the backbone."""
        for tap in self._taps:
            tap.remove()
        self._taps = []
        self._middle.remove()

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
        adapters = {t: self.bank.resident(snapshot[t]) for t in rows_of}
        groups = tuple(TaskGroup(adapters[t], on_device, tuple(r))
                       for (t, r), on_device in zip(rows_of.items(), self._rows_on_device(list(rows_of.values()))))
        threshold = self.gather_from_tasks
        gathered = self.strategy == "gathered" or (
            self.strategy == "auto" and threshold is not None and len(groups) >= threshold
        )
        folded = {t: a.bottlenecks for t, a in adapters.items() if a.bottlenecks is not None}
        adapted = frozenset().union(*(f.blocks for f in folded.values()))
        stacks = stack_rows(folded, rows_of, len(task_ids)) if gathered and folded else None
        return BatchPlan(len(task_ids), groups, adapted, stacks, any(g.adapter.qkv for g in groups))

    def _rows_on_device(self, rows: list[list[int]]) -> list[Tensor]:
        """Each group's row indices on the device, from one copy for the batch rather than one per group."""
        if not rows:
            return []
        flat = torch.tensor([row for group in rows for row in group], device=self.bank.device)
        return list(flat.split([len(group) for group in rows]))

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
                    tokens = self.backbone.forward_features(images.to(self.bank.device, self.bank.dtype))
                    with clock.section("adapter"), clock.section("head"):
                        results = self._heads(plan, tokens, task_ids)
            finally:
                self._plan, self._clock = None, None
        seconds = clock.seconds()
        return results, BatchTimings(seconds["total"], seconds.get("adapter", 0.0), seconds.get("head", 0.0))

    def _heads(self, plan: BatchPlan, tokens: Tensor, task_ids: list[str | None]) -> list[RowResult]:
        inputs = self._head_inputs(plan, tokens, task_ids)
        results: list[RowResult | None] = [None] * len(task_ids)
        for group in plan.groups:
            logits = group.adapter.head(inputs[group.adapter.head.reads].index_select(0, group.rows))
            for row, row_logits in zip(group.rows_on_host, logits):
                results[row] = RowResult(group.adapter.task_id, group.adapter.version, row_logits)
        for row, task_id in enumerate(task_ids):
            if task_id is None:
                results[row] = RowResult(None, None, inputs[Head.POOLED][row])
        return results  # type: ignore[return-value]

    def _head_inputs(self, plan: BatchPlan, tokens: Tensor, task_ids: list[str | None]) -> dict[Head, Tensor]:
        """What the batch's heads read, each computed once for the batch: a bare row or a format 1 head the
        backbone's pooled features, token heads the patch tokens normalised without affine."""
        middle = self._middle.take()
        reads = {g.adapter.head.reads for g in plan.groups}
        inputs = {}
        if None in task_ids or Head.POOLED in reads:
            inputs[Head.POOLED] = self.backbone.forward_head(tokens, pre_logits=True)
        if Head.TOKENS in reads or Head.TOKENS_MID in reads:
            inputs[Head.TOKENS] = self._normed_patches(tokens)
        if Head.TOKENS_MID in reads:
            inputs[Head.TOKENS_MID] = torch.cat([inputs[Head.TOKENS], self._normed_patches(middle)], dim=-1)
        return inputs

    def _normed_patches(self, tokens: Tensor) -> Tensor:
        patches = tokens[:, self.backbone.num_prefix_tokens :]
        return F.layer_norm(patches, patches.shape[-1:], self._unit_scale, eps=LAYER_NORM_EPS)

    def _block_update_fn(self, block: int):
        return lambda h, out: self._block_update(block, h, out)

    def _qkv_update_fn(self, block: int):
        return lambda x, out: self._qkv_update(block, x, out)

    def _qkv_update(self, block: int, x: Tensor, out: Tensor) -> Tensor:
        """LoRA rows: each task's low-rank qkv update on its own rows (grouped; LoRA tasks are rarer)."""
        plan, clock = self._plan, self._clock
        if plan is None or clock is None or not plan.has_lora:
            return out
        with clock.section("adapter"):
            for group in plan.groups:
                lora = group.adapter.qkv.get(block)
                if lora is None:
                    continue
                if plan.covers_all_rows(group):
                    out.add_(lora(x))
                else:
                    out.index_add_(0, group.rows, lora(x.index_select(0, group.rows)))
        return out

    def _block_update(self, block: int, h: Tensor, out: Tensor) -> Tensor:
        """Adds every row's bottleneck adapter to the block's output, in place (inference only)."""
        plan, clock = self._plan, self._clock
        if plan is None or clock is None or block not in plan.adapted_blocks:
            return out
        with clock.section("adapter"):
            normed = F.layer_norm(h, h.shape[-1:], self._unit_scale, eps=LAYER_NORM_EPS)  # once for the whole batch
            stacks = plan.row_stacks
            if stacks is not None:
                hidden = _with_ones(F.gelu(torch.baddbmm(stacks.down_bias[block], normed, stacks.down[block])))
                return out.baddbmm_(hidden, stacks.up[block])
            for group in plan.groups:
                folded = group.adapter.bottlenecks
                if folded is None or block not in folded.blocks:
                    continue
                if plan.covers_all_rows(group):
                    hidden = _hidden(normed, folded, block)
                    out.view(-1, out.shape[-1]).addmm_(hidden.view(-1, hidden.shape[-1]), folded.up[block])
                else:
                    hidden = _hidden(normed.index_select(0, group.rows), folded, block)
                    out.index_add_(0, group.rows, hidden @ folded.up[block])
        return out


def _with_ones(z: Tensor) -> Tensor:
    """[z, 1]: the column of ones that multiplies the bias row of the folded Up."""
    return F.pad(z, (0, 1), value=1.0)


def _hidden(normed: Tensor, folded: FoldedBottlenecks, block: int) -> Tensor:
    return _with_ones(F.gelu(torch.matmul(normed, folded.down[block]) + folded.down_bias[block]))


def stack_rows(folded: Mapping[str, FoldedBottlenecks], rows_of: Mapping[str, list[int]], batch_size: int) -> RowStacks:
    """Each row's weights in batch order, all at the batch's widest r; rows without an adapter get zeros."""
    r = max(f.r for f in folded.values())
    any_task = next(iter(folded.values()))
    depth, dim = any_task.down.shape[:2]
    zeros = any_task.down.new_zeros
    per_row = [FoldedBottlenecks(zeros(depth, dim, r), zeros(depth, 1, r), zeros(depth, r + 1, dim), frozenset())
               ] * batch_size
    for task_id, weights in folded.items():
        widened = weights.widened(r)
        for row in rows_of[task_id]:
            per_row[row] = widened
    return RowStacks(*(torch.stack([getattr(w, name) for w in per_row], dim=1) for name in ("down", "down_bias", "up")))
