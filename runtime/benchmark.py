"""`mosaserve bench runtime`: throughput of mixed-task batches against the backbone alone and baselines.

Every figure is a ratio to backbone-only throughput measured in the same run on the same inputs.
Baselines a user would otherwise pick: swapping one task's weights into a single adapted model per
request, and one full model copy per task (memory reported too).
"""

from __future__ import annotations

import copy
import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from ..adapters.backbone import BackboneSpec, load_backbone
from ..adapters.config import AdapterConfig
from ..adapters.file_format import AdapterFile, AdapterHeader
from ..adapters.model import AdaptedViT
from .bank import AdapterBank
from .executor import MixedTaskExecutor


def random_task(backbone, info, method: str, r: int, seed: int, classes: int = 10) -> tuple[AdapterFile, AdaptedViT]:
    torch.manual_seed(seed)
    model = AdaptedViT(copy.deepcopy(backbone), AdapterConfig(method=method, r=r), classes).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    model.merge_()
    header = AdapterHeader(model.config, info, tuple(str(i) for i in range(classes)))
    return AdapterFile(header, model.export_tensors()), model


def images_per_second(run: Callable[[], object], batch: int, repeats: int) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return batch / best


def adapter_flop_share(dim: int, tokens: int, r: int, mlp_ratio: float = 4.0) -> float:
    """Adapter FLOPs over the block's (qkv, proj, attention, MLP) for a bottleneck of width r."""
    block = 2 * tokens * dim * dim * (3 + 1 + 2 * mlp_ratio) + 4 * tokens * tokens * dim
    return (4 * tokens * dim * r) / block


def bench_model(name: str, batch: int, repeats: int, r: int, num_tasks: int) -> list[dict]:
    torch.manual_seed(0)
    backbone, info = load_backbone(BackboneSpec(name))
    tasks = [random_task(backbone, info, "mosa", r, seed) for seed in range(num_tasks)]
    standard, _ = random_task(backbone, info, "adapter", r, 999)
    bank = AdapterBank(info, max_resident=num_tasks + 1)
    for i, (file, _) in enumerate(tasks):
        bank.register(f"t{i}", file, version=1)
    bank.register("standard", standard, version=1)
    images = torch.randn(batch, 3, *info.input_size[1:])
    active = MixedTaskExecutor(backbone, bank)
    rows: list[dict] = []

    def record(scenario: str, ips: float, **extra) -> None:
        rows.append({"model": name, "scenario": scenario, "images_per_s": ips, **extra})

    record("backbone only", images_per_second(lambda: active.run(images, [None] * batch), batch, repeats))
    for label, ids in [("1 task (standard adapter)", ["standard"] * batch), ("1 task (MoSA)", ["t0"] * batch),
                       ("8 tasks", [f"t{i % 8}" for i in range(batch)]),
                       (f"{min(32, num_tasks)} tasks", [f"t{i % min(32, num_tasks)}" for i in range(batch)]),
                       ("all rows distinct", [f"t{i % num_tasks}" for i in range(batch)])]:
        for strategy in ("grouped", "gathered"):
            active.strategy = strategy
            record(f"{label} [{strategy}]", images_per_second(lambda: active.run(images, ids), batch, repeats))
    active.close()
    record(*_swap_per_request(tasks, images, repeats))
    label, ips, memory = _model_per_task(tasks, images, repeats)
    record(label, ips, weights_bytes=memory)
    base = rows[0]["images_per_s"]
    tokens = backbone.patch_embed.num_patches + backbone.num_prefix_tokens
    for row in rows:
        row["ratio_to_backbone"] = row["images_per_s"] / base
        row["adapter_flop_share"] = adapter_flop_share(backbone.num_features, tokens, r)
    return rows


def _swap_per_request(tasks, images, repeats) -> tuple[str, float]:
    """One adapted model; each request loads its task's weights, then runs alone (batch 1)."""
    model = tasks[0][1]
    files = [f for f, _ in tasks]

    def run() -> None:
        with torch.inference_mode():
            for row in range(len(images)):
                model.load_tensors(files[row % len(files)].tensors)
                model(images[row : row + 1])

    return f"baseline: swap weights per request ({len(files)} tasks)", images_per_second(run, len(images), repeats)


def _model_per_task(tasks, images, repeats) -> tuple[str, float, int]:
    """One full model per task; rows grouped per task, each task's model runs its rows."""
    models = [m for _, m in tasks]
    per_task = max(1, len(images) // len(models))

    def run() -> None:
        with torch.inference_mode():
            for i, model in enumerate(models):
                model(images[i * per_task : (i + 1) * per_task])

    memory = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    return (f"baseline: one model per task ({len(models)} tasks)", images_per_second(run, len(images), repeats),
            memory)


def format_table(rows: list[dict]) -> str:
    lines = [f"| model | scenario | images/s | ratio to backbone | adapter FLOP share |", "| --- | --- | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['scenario']} | {row['images_per_s']:.1f} | "
                     f"{row['ratio_to_backbone']:.3f} | {row['adapter_flop_share']:.2%} |")
    return "\n".join(lines)


def run_benchmark(models: list[str], batch: int, repeats: int, r: int, num_tasks: int, out: Path) -> list[dict]:
    rows = [row for name in models for row in bench_model(name, batch, repeats, r, num_tasks)]
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "processor": platform.processor(), "batch": batch, "repeats": repeats, "r": r, "num_tasks": num_tasks}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows
