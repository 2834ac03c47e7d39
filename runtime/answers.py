"""What a served row answers: the task's top-k labels with probabilities, or the bare backbone's embedding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import NonFiniteOutputError
from .executor import RowResult


@dataclass(frozen=True)
class Answer:
    task_id: str
    version: int | None  # None for the bare backbone
    top: tuple[tuple[str, float], ...]  # (label, probability), most probable first
    embedding: tuple[float, ...] | None = None  # the bare backbone's pooled features
    probabilities: tuple[float, ...] | None = None  # every class's, in the labels' order, where asked for


def answer_row(task_id: str, result: RowResult, labels: tuple[str, ...] | None, top_k: int,
               every_class: bool = False) -> Answer:
    if result.version is None or labels is None:
        return Answer(task_id, None, (), tuple(result.output.float().tolist()))
    probs = torch.softmax(result.output.float(), dim=-1)
    if not torch.isfinite(probs).all():
        # Validation refuses NaN/Inf values in a file, not finite ones that overflow in the forward pass;
        # a forward probe at registration would catch those but costs a forward pass per upload.
        raise NonFiniteOutputError(f"task {task_id!r} v{result.version} produced non-finite outputs: "
                                   "its adapter's weights or scale are too large; register a sound version")
    values, indices = probs.topk(min(top_k, len(labels)))
    top = tuple((labels[i], round(v, 6)) for v, i in zip(values.tolist(), indices.tolist()))
    return Answer(task_id, result.version, top, probabilities=tuple(probs.tolist()) if every_class else None)
