"""`mosaserve loadtest compare`: the served system against the bare backbone and per-task models, in one run.

One local Ray cluster, one store of random adapters, the same load generator and SLO for every
system, each system deployed in turn on the same port:
1. mosaserve serving only the bare backbone: the limit;
2. mosaserve with N tasks per request mix (uniform, Zipf);
3. per-task full models behind `@serve.multiplexed` with the same batching settings (per_task_models.py);
then a burst of registrations while mosaserve serves its largest task set at a steady rate, and what one
upload costs each process (CPU, no prediction load).
Every system's capacity is the highest swept rate whose p99 meets the SLO with no errors.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from ..adapters.backbone import BackboneSpec, load_backbone
from ..adapters.file_format import encode_adapter
from .inputs import noise_png
from .local_service import deploy_and_wait, local_serve, serving_memory_mib
from .mixes import make_mix
from .report import format_rows
from .runner import Target
from .scenarios import LoadSpec, run_scenario
from .process_cost import measure_prediction_cost, measure_upload_cost
from .runtime_bench import machine_description, random_task
from ..runtime.device import local_device, serving_dtype
from ..runtime.store import AdapterStore
from ..deploy.app import build_app
from ..deploy.config import ServeConfig
from .per_task_models import per_task_models_app

APP = "side-by-side"
TOKEN = "side-by-side-admin"


@dataclass(frozen=True)
class CompareSpec:
    backbone: BackboneSpec = BackboneSpec("vit_tiny_patch16_224")  # seeded random weights: speed does not depend on them
    # Every system computes here, the baseline's per-task models too ("cuda" and "bfloat16" on a GPU; bfloat16
    # also pays on a CPU with AMX or avx512_bf16: BENCHMARKS.md).
    device: str = "cpu"
    dtype: str = "float32"
    task_counts: tuple[int, ...] = (10, 100)
    mixes: tuple[str, ...] = ("uniform", "zipf")
    rates: tuple[float, ...] = (4, 6, 8, 10, 12, 14, 16, 20, 24)
    duration_s: float = 8.0
    warmup_s: float = 2.0
    slo_ms: float = 500.0
    r: int = 16
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    torch_threads: int = 1
    # Per-task models kept per replica by the baseline: all, a generous bound, and Serve's default (3).
    max_models: tuple[int, ...] = (-1, 8, 3)
    registrations: int = 100  # uploads per burst
    registration_rounds: int = 3  # steady / burst pairs: each p99 pools three phases' requests, not one's
    registration_rate_share: float = 0.6  # the registration burst's load, as a share of the capacity found
    cost_rate: float = 10.0  # req/s at which each system's CPU per prediction is read: below every capacity
    image_size: int = 224
    port: int = 8123

    def __post_init__(self) -> None:
        local_device(self.device)  # the run starts its own cluster here: a GPU it lacks would leave replicas pending
        serving_dtype(self.dtype)


def run_compare(spec: CompareSpec, out_dir: Path) -> dict:
    """Starts a local Ray cluster for the run and stops it after."""
    with local_serve(spec.port, "mosaserve-compare-") as (url, work_dir):
        return compare_on_cluster(spec, url, work_dir, out_dir)


def compare_on_cluster(spec: CompareSpec, url: str, work_dir: Path, out_dir: Path) -> dict:
    """The whole comparison on a running Ray cluster whose Serve proxy answers at `url`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = _config(spec, work_dir)
    tasks, uploads = _make_adapters(config, max(spec.task_counts), 4, spec.r)
    doc = _measure_all(spec, config, tasks, uploads, url, out_dir)
    doc.update(spec=asdict(spec), machine=machine_description(), summary=summary_table(doc, max(spec.rates)))
    (out_dir / "compare.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "compare.md").write_text(doc["summary"] + "\n")
    return doc


def _config(spec: CompareSpec, root: Path) -> ServeConfig:
    return ServeConfig.of(backbone=spec.backbone, store_dir=str(root / "store"), replicas=1, replica_num_cpus=1,
                       device=spec.device, dtype=spec.dtype, torch_threads=spec.torch_threads,
                       max_batch_size=spec.max_batch_size, batch_wait_timeout_s=spec.batch_wait_timeout_s,
                       admin_token=TOKEN, registration_timeout_s=60, admin_port=0)


def _make_adapters(config: ServeConfig, count: int, uploads: int, r: int) -> tuple[list[str], list[bytes]]:
    """`count` random tasks published to the store, and `uploads` more adapter files for the registration burst."""
    backbone, info = load_backbone(config.runtime.backbone)

    def encoded(seed: int) -> bytes:
        file, _ = random_task(backbone, info, "mosa", r, seed=seed)
        return encode_adapter(file.header, file.tensors)

    store, tasks = AdapterStore(config.runtime.store_dir), [f"task{i:03d}" for i in range(count)]
    for seed, task in enumerate(tasks):
        store.publish(task, encoded(seed))
    return tasks, [encoded(10_000 + i) for i in range(uploads)]


def _measure_all(spec: CompareSpec, config: ServeConfig, tasks: list[str], uploads: list[bytes], url: str,
                 out_dir: Path) -> dict:
    from ray import serve

    image = noise_png(spec.image_size)
    runs: dict[str, dict] = {}
    _deploy(build_app(config), url)
    runs["mosaserve, bare backbone"] = dict(_sweep(spec, Target(url), "backbone", [], image, out_dir / "backbone"),
                                            serving_rss_mib=serving_memory_mib(url))
    for count in spec.task_counts:
        for mix in spec.mixes:
            runs[f"mosaserve, {count} tasks, {mix}"] = dict(
                _sweep(spec, Target(url), mix, tasks[:count], image, out_dir / f"mosaserve-{count}-{mix}"),
                tasks=count, mix=mix, serving_rss_mib=serving_memory_mib(url))
    storms, upload_costs = {}, {}
    for route, target in _upload_routes(url).items():  # the main port, then the task board's admin port
        storms[route] = _registration_storm(spec, target, tasks, uploads, image, runs, out_dir / f"registrations-{route}")
        upload_costs[route] = measure_upload_cost(target, uploads, spec.registrations, spec.duration_s, TOKEN,
                                                  prefix=f"upload-cost-{route}-")
    prediction_cost = {"mosaserve": _prediction_cost(spec, Target(url), tasks, image)}
    serve.delete(APP)
    for models in spec.max_models:
        _deploy(per_task_models_app(config, models), url, path="/docs")
        held = "all" if models == -1 else str(models)
        for count in spec.task_counts:
            for mix in spec.mixes:
                runs[f"per-task models ({held} per replica), {count} tasks, {mix}"] = dict(
                    _sweep(spec, Target(url, send_model_id=True), mix, tasks[:count], image,
                           out_dir / f"per-task-{held}-{count}-{mix}"), tasks=count, mix=mix, baseline=True,
                    serving_rss_mib=serving_memory_mib(url))
        # After the sweeps: a baseline that holds every model has them all loaded by then, as in steady state.
        prediction_cost[f"per-task models ({held} per replica)"] = _prediction_cost(
            spec, Target(url, send_model_id=True), tasks, image)
        serve.delete(APP)
    return {"runs": runs, "registration_storms": storms, "upload_costs": upload_costs, "prediction_cost": prediction_cost}


def _upload_routes(url: str) -> dict[str, Target]:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
        admin_url = json.loads(response.read())["admin_url"]
    return {"main": Target(url), "admin": Target(url, admin_url=admin_url)}


def _prediction_cost(spec: CompareSpec, target: Target, tasks: list[str], image: bytes) -> dict:
    """CPU per prediction by process over the largest task set, uniform, at `spec.cost_rate`."""
    count = max(spec.task_counts)
    cost = measure_prediction_cost(target, make_mix("uniform", tasks[:count]), image, spec.cost_rate, spec.duration_s)
    return dict(cost, tasks=count)


def _deploy(app, url: str, path: str = "/healthz") -> None:
    deploy_and_wait(app, APP, url, path)


def _sweep(spec: CompareSpec, target: Target, mix: str, tasks: list[str], image: bytes, out: Path) -> dict:
    load = LoadSpec(rate=spec.rates[0], duration_s=spec.duration_s, slo_s=spec.slo_ms / 1000,
                    warmup_s=spec.warmup_s, sweep_rates=spec.rates)
    doc = run_scenario("sweep", target, load, make_mix(mix, tasks), image, out)
    best = doc["max_rate_within_slo"]
    at_best = doc["runs"][f"{best:g}"]["overall"] if best else None
    return {"max_rate_within_slo": best, "goodput_at_slo_rps": doc["goodput_at_slo_rps"], "at_max_rate": at_best,
            "report": str(out / "report.json")}


def _registration_storm(spec, target: Target, tasks, uploads, image, runs, out: Path) -> dict:
    """Uploads (new tasks, then replacements) during steady load over the largest task set."""
    largest = max(spec.task_counts)
    capacity = runs[f"mosaserve, {largest} tasks, uniform"]["max_rate_within_slo"] or spec.rates[0]
    load = LoadSpec(rate=round(capacity * spec.registration_rate_share, 1), duration_s=2 * spec.duration_s,
                    slo_s=spec.slo_ms / 1000, warmup_s=spec.warmup_s, registrations=spec.registrations,
                    rounds=spec.registration_rounds, upload_prefix=f"storm-{out.name}-")
    doc = run_scenario("registrations", target, load, make_mix("uniform", tasks[:largest]), image, out, uploads,
                       TOKEN)
    return {"rate": load.rate, "verdict": doc["verdict"], "phases": doc["phases"],
            "registrations": doc["registrations"], "report": str(out / "report.json")}


def summary_table(doc: dict, top_rate: float) -> str:
    """The side-by-side table; a system that met the SLO at the top swept rate shows its capacity as a lower bound."""
    runs = doc["runs"]
    limit = runs["mosaserve, bare backbone"]["goodput_at_slo_rps"] or None
    rows = {}
    for name, run in runs.items():
        row = dict(run["at_max_rate"] or {}, max_rate=run["max_rate_within_slo"])
        row["vs_backbone"] = run["goodput_at_slo_rps"] / limit if limit else None
        row["vs_per_task"] = _vs_best_baseline(runs, run)
        rows[name] = row
    lines = ["| system | max rate in SLO | goodput | p50 ms | p99 ms | x bare backbone | x best per-task models | "
             "serving RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    capped = [name for name, row in rows.items() if row["max_rate"] == top_rate]
    for name, row in rows.items():
        rate = (">=" if name in capped else "") + _fmt(row["max_rate"])
        lines.append(f"| {name} | {rate} | {_fmt(row.get('goodput_rps'))} | {_fmt(row.get('p50_ms'))} | "
                     f"{_fmt(row.get('p99_ms'))} | {_fmt(row['vs_backbone'], 2)} | {_fmt(row['vs_per_task'], 2)} | "
                     f"{_fmt(runs[name].get('serving_rss_mib'), 0)} |")
    if capped:
        lines += ["", f"Met the SLO at the top swept rate ({top_rate:g} req/s), so capacity not found, and ratios "
                      f"involving them bounded by the sweep, not measured: {', '.join(capped)}. Sweep higher --rates."]
    for route, storm in doc["registration_storms"].items():
        lines += ["", f"Registration burst via the {route} port at {storm['rate']} req/s: "
                      f"{storm['registrations']['count']} uploads ({storm['registrations']['statuses']}), p99 during / "
                      f"before = {_fmt(storm['verdict']['p99_ratio'], 2)}, failed requests "
                      f"{storm['verdict']['failed_requests']}", "",
                  format_rows(storm["phases"], "registration burst phase")]
    for route, cost in doc["upload_costs"].items():
        lines += ["", f"Upload cost via the {route} port, no prediction load: {cost['accepted']} of {cost['uploads']} "
                      f"uploads in {cost['wall_s']} s, registration p50 {cost['registration_p50_ms']} ms; CPU ms per "
                      "upload: " + _per_role(cost["cpu_ms_per_upload"])]
    lines += ["", "CPU ms per prediction (uniform over the largest task set, below capacity):"]
    lines += [f"- {system}, {cost['tasks']} tasks at {cost['rate']:g} req/s, {cost['answered']} of {cost['predictions']} "
              f"answered: " + _per_role(cost["cpu_ms_per_prediction"]) for system, cost in doc["prediction_cost"].items()]
    return "\n".join(lines)


def _per_role(cpu_ms: dict[str, float]) -> str:
    """The roles that spent at least 0.05 ms, largest first."""
    return ", ".join(f"{role} {ms:.1f}" for role, ms in cpu_ms.items() if ms >= 0.05)


def _vs_best_baseline(runs: dict, run: dict) -> float | None:
    """A mosaserve run's goodput over the best per-task-model run of the same tasks and mix."""
    if run.get("baseline") or "tasks" not in run:
        return None
    best = max((b["goodput_at_slo_rps"] for b in runs.values()
                if b.get("baseline") and (b["tasks"], b["mix"]) == (run["tasks"], run["mix"])), default=0)
    return run["goodput_at_slo_rps"] / best if best else None


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
