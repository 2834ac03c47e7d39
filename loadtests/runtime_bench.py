"""`mosaserve bench runtime`: throughput of mixed-task batches against the backbone alone and baselines.

Every figure is a ratio to backbone-only throughput measured in the same run on the same inputs.
Baselines a user would otherwise pick: swapping one task's weights into a single adapted model per
request, one full model copy per task (memory reported too), and Hugging Face PEFT's mixed-adapter
batch (`adapter_names`) with LoRA on the same timm model (needs `pip install peft`, the `bench` extra).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..adapters.backbone import BackboneSpec, load_backbone
from ..adapters.config import AdapterConfig
from ..adapters.file_format import AdapterFile, AdapterHeader
from ..adapters.model import AdaptedViT
from ..runtime.bank import AdapterBank
from ..runtime.device import local_device, serving_dtype
from ..runtime.executor import MixedTaskExecutor


def random_task(backbone, info, method: str, r: int, seed: int, classes: int = 10,
                head: str = "tokens") -> tuple[AdapterFile, AdaptedViT]:
    torch.manual_seed(seed)
    model = AdaptedViT(copy.deepcopy(backbone), AdapterConfig(method=method, r=r, head=head), classes).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.02)
    model.merge_()
    header = AdapterHeader(model.config, info, tuple(str(i) for i in range(classes)))
    return AdapterFile(header, model.export_tensors()), model


@dataclass(frozen=True)
class Measured:
    images_per_s: float  # from the median time over the rounds
    ratio: float  # median over the rounds of the paired ratio to the baseline
    ratio_low: float  # the lowest and highest paired ratio: the run's own spread
    ratio_high: float


def measure_against(scenarios: dict[str, Callable[[], object]], baseline: str, batch: int, rounds: int,
                    sync: Callable[[], None] = lambda: None) -> dict[str, Measured]:
    """Each scenario's throughput as a ratio to the baseline timed right before and right after it.

    A shared machine's speed drifts within a minute (other tenants, clock changes) as much as the
    effects measured here; so every scenario run is bracketed by two baseline runs, its ratio in
    a round is their mean time over its own, and the median over the rounds is reported. `sync`
    waits for the device (on a GPU a call returns when its kernels are queued, not done).
    """
    for run in scenarios.values():
        run()  # warm-up: thread pools, allocator, first touch of the weights
        run()
    times: dict[str, list[float]] = {name: [] for name in scenarios}
    ratios: dict[str, list[float]] = {name: [] for name in scenarios}
    for _ in range(rounds):
        before = _timed(scenarios[baseline], sync)
        times[baseline].append(before)
        for name, run in scenarios.items():
            if name == baseline:
                continue
            own, after = _timed(run, sync), _timed(scenarios[baseline], sync)
            times[name].append(own)
            times[baseline].append(after)
            ratios[name].append((before + after) / 2 / own)
            before = after
    ratios[baseline] = [1.0]
    return {name: Measured(batch / statistics.median(times[name]), statistics.median(ratios[name]),
                           min(ratios[name]), max(ratios[name])) for name in scenarios}


def _timed(run: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    run()
    sync()
    return time.perf_counter() - start


def adapter_flop_share(dim: int, tokens: int, r: int, mlp_ratio: float = 4.0) -> float:
    """Adapter FLOPs over the block's (qkv, proj, attention, MLP) for a bottleneck of width r."""
    block = 2 * tokens * dim * dim * (3 + 1 + 2 * mlp_ratio) + 4 * tokens * tokens * dim
    return (4 * tokens * dim * r) / block


def bench_model(spec: BackboneSpec, batch: int, repeats: int, r: int, num_tasks: int,
                device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> list[dict]:
    backbone, info = load_backbone(spec)
    # Task files are made as a user uploads them (float32, on the host); the bank moves them to the device.
    tasks = [random_task(backbone, info, "mosa", r, seed) for seed in range(num_tasks)]
    standard, _ = random_task(backbone, info, "adapter", r, 999)
    lora_tasks = [random_task(backbone, info, "lora", r, 2000 + seed) for seed in range(min(32, num_tasks))]
    mid_tasks = [random_task(backbone, info, "mosa", r, 3000 + seed, head="tokens_mid")[0] for seed in range(num_tasks)]
    bank = AdapterBank(info, device, dtype, max_resident=2 * num_tasks + len(lora_tasks) + 1)
    for prefix, group in (("t", tasks), ("lora", lora_tasks), ("mid", [(file, None) for file in mid_tasks])):
        for i, (file, _) in enumerate(group):
            bank.register(f"{prefix}{i}", file, version=1)
    bank.register("standard", standard, version=1)
    backbone.to(device, dtype)
    for _, model in tasks:  # the baselines' own models, on the device too
        model.to(device, dtype)
    images = torch.randn(batch, 3, *info.input_size[1:]).to(device, dtype)
    # Baselines are built before the executor hooks into the shared backbone, so no copy carries its taps.
    plain = copy.deepcopy(backbone)
    scenarios: dict[str, Callable[[], object]] = {"backbone only": lambda: plain(images)}
    peft_label, peft_run = _peft_mixed_batch(backbone, r, len(lora_tasks), images)
    active = MixedTaskExecutor(backbone, bank)
    # The executor's hooks with nothing to add: what the taps themselves cost.
    scenarios["bare rows through the executor"] = ExecutorScenario(active, "grouped", images, [None] * batch)
    for label, ids in [("1 task (standard adapter)", ["standard"] * batch), ("1 task (MoSA)", ["t0"] * batch),
                       ("8 tasks", [f"t{i % 8}" for i in range(batch)]),
                       (f"{min(32, num_tasks)} tasks", [f"t{i % min(32, num_tasks)}" for i in range(batch)]),
                       ("all rows distinct", [f"t{i % num_tasks}" for i in range(batch)])]:
        for strategy in ("grouped", "gathered"):
            scenarios[f"{label} [{strategy}]"] = ExecutorScenario(active, strategy, images, ids)
    # Half the rows' heads read the middle block too: both kinds of token head in one batch.
    mixed_heads = [f"{'mid' if i % 2 else 't'}{i % num_tasks}" for i in range(batch)]
    scenarios["all rows distinct, half with middle-block heads [gathered]"] = ExecutorScenario(
        active, "gathered", images, mixed_heads)
    lora_ids = [f"lora{i % len(lora_tasks)}" for i in range(batch)]
    scenarios[f"{len(lora_tasks)} LoRA tasks [grouped]"] = ExecutorScenario(active, "grouped", images, lora_ids)
    if peft_run is not None:
        scenarios[peft_label] = peft_run
    scenarios[f"baseline: swap weights per request ({num_tasks} tasks)"] = _swap_per_request(tasks, images)
    per_task_label, per_task_run, memory = _model_per_task(tasks, images)
    scenarios[per_task_label] = per_task_run
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        measured = measure_against(scenarios, "backbone only", batch, repeats, sync)
    active.close()
    tokens = backbone.patch_embed.num_patches + backbone.num_prefix_tokens
    share = adapter_flop_share(backbone.num_features, tokens, r)
    rows = [{"model": spec.name, "scenario": label, "images_per_s": m.images_per_s, "ratio_to_backbone": m.ratio,
             "ratio_low": m.ratio_low, "ratio_high": m.ratio_high, "adapter_flop_share": share,
             "adapter_time_share": _median_share(scenarios[label], "shares"),
             "head_time_share": _median_share(scenarios[label], "head_shares"),
             **({"weights_bytes": memory} if label == per_task_label else {})}
            for label, m in measured.items()]
    if peft_run is None:
        rows.append({"model": spec.name, "scenario": peft_label, "images_per_s": float("nan"),
                     "ratio_to_backbone": float("nan"), "ratio_low": float("nan"), "ratio_high": float("nan"),
                     "adapter_flop_share": share, "adapter_time_share": float("nan"), "head_time_share": float("nan")})
    return rows


def _median_share(scenario: Callable[[], object], kind: str) -> float:
    shares = getattr(scenario, kind, None)
    return statistics.median(shares) if shares else float("nan")


class ExecutorScenario:
    """A batch through the executor; keeps the adapters' (heads included) and the heads' share of each batch's time.

    That share is timed inside the batch (the executor's clock), so the machine's drift between
    runs, which blurs the throughput ratios, does not touch it.
    """

    def __init__(self, executor: MixedTaskExecutor, strategy: str, images, ids) -> None:
        self.executor, self.strategy, self.images, self.ids = executor, strategy, images, ids
        self.shares: list[float] = []
        self.head_shares: list[float] = []

    def __call__(self) -> None:
        self.executor.strategy = self.strategy
        _, timings = self.executor.run_timed(self.images, self.ids)
        self.shares.append(timings.adapter_s / timings.total_s)
        self.head_shares.append(timings.head_s / timings.total_s)


def _swap_per_request(tasks, images) -> Callable[[], None]:
    """One adapted model; each request loads its task's weights, then runs alone (batch 1).

    The weights wait on the model's device in its precision (the baseline's best case: no host copy).
    """
    model = tasks[0][1]
    weights = [{name: t.to(images.device, images.dtype) for name, t in f.tensors.items()} for f, _ in tasks]

    def run() -> None:
        for row in range(len(images)):
            model.load_tensors(weights[row % len(weights)])
            model(images[row : row + 1])

    return run


def _peft_mixed_batch(backbone, r: int, num_tasks: int, images) -> tuple[str, Callable[[], object] | None]:
    """PEFT LoRA on qkv with a per-task head, every row naming its adapter (`adapter_names`)."""
    label = f"baseline: PEFT mixed LoRA batch ({num_tasks} tasks)"
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return f"{label}: skipped, pip install peft", None
    model = copy.deepcopy(backbone)
    model.reset_classifier(10)  # a head per task through modules_to_save, as a PEFT user would do it
    config = LoraConfig(r=r, lora_alpha=r, target_modules=["qkv"], modules_to_save=["head"])
    peft_model = get_peft_model(model, config, adapter_name="t0")
    for i in range(1, num_tasks):
        peft_model.add_adapter(f"t{i}", config)
    for name, parameter in peft_model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; give every adapter real weights
            torch.nn.init.normal_(parameter, std=0.02)
    peft_model.to(images.device, images.dtype).eval()  # its new head and LoRA weights start on the host in float32
    names = [f"t{i % num_tasks}" for i in range(len(images))]

    return label, lambda: peft_model(images, adapter_names=names)


def _model_per_task(tasks, images) -> tuple[str, Callable[[], None], int]:
    """One full model per task; rows grouped per task, each task's model runs its rows."""
    models = [m for _, m in tasks]
    per_task = max(1, len(images) // len(models))

    def run() -> None:
        for i, model in enumerate(models):
            model(images[i * per_task : (i + 1) * per_task])

    memory = sum(p.numel() * p.element_size() for m in models for p in m.parameters())
    return f"baseline: one model per task ({len(models)} tasks)", run, memory


def format_table(rows: list[dict]) -> str:
    lines = ["| model | scenario | images/s | ratio to backbone (median) | lowest-highest round | "
             "adapter share of batch time (heads included) | head share | adapter FLOP share |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['scenario']} | {row['images_per_s']:.1f} | "
                     f"{row['ratio_to_backbone']:.3f} | {row['ratio_low']:.3f}-{row['ratio_high']:.3f} | "
                     f"{row['adapter_time_share']:.2%} | {row['head_time_share']:.2%} | {row['adapter_flop_share']:.2%} |")
    return "\n".join(lines)


def machine_description() -> str:
    """Architecture, CPU model and core count: results from another CPU are not comparable figure by figure."""
    model = platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{platform.machine()}, {model or 'unknown CPU'}, {os.cpu_count()} cpus"


def run_benchmark(models: list[str], batch: int, repeats: int, r: int, num_tasks: int, out: Path,
                  device: str = "cpu", dtype: str = "float32") -> list[dict]:
    target, precision = local_device(device), serving_dtype(dtype)
    rows = [row for name in models
            for row in bench_model(BackboneSpec(name), batch, repeats, r, num_tasks, target, precision)]
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": machine_description(),
            "device": device, "dtype": dtype, "batch": batch,
            "repeats": repeats, "r": r, "num_tasks": num_tasks,
            **({"gpu": torch.cuda.get_device_name(target)} if target.type == "cuda" else {})}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return rows
