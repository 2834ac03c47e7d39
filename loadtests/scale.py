"""`mosaserve loadtest scale --tasks N`: one replica serving N tasks, measured wherever the task count could hurt.

On a local Ray cluster, the embedded backbone and N random merged MoSA adapters (r = 16), over HTTP:
1. registration: every file by bulk upload to the board's admin port, until every replica serves them,
   beside single uploads of a sample; then a re-upload of a live file (a no-op);
2. the replica's resident memory per task against the file's bytes, once every task has been served;
3. the task listing (first page, and all pages) and a /metrics scrape after every task had traffic;
4. a closed-loop Zipf load over all N tasks, every adapter resident, and /metrics after it;
5. a restart with `resident` adapters on the device: until ready, the first prediction of tasks after it,
   and the same Zipf load again (LRU hit rate, throughput against all-resident).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from prometheus_client.parser import text_string_to_metric_families

from ..adapters.backbone import BackboneSpec, load_backbone
from ..adapters.embedded import EMBEDDED_BACKBONE
from ..adapters.file_format import encode_adapter
from ..client import Client
from ..deploy.app import build_app
from ..deploy.config import ServeConfig
from .closed_loop import closed_loop
from .inputs import noise_png
from .local_service import deploy_and_wait, local_serve, serving_memory_mib
from .mixes import make_mix
from .runtime_bench import machine_description, random_task

APP = "scale"
TOKEN = "scale-admin"


@dataclass(frozen=True)
class ScaleSpec:
    tasks: int = 10_000
    backbone: BackboneSpec = EMBEDDED_BACKBONE
    r: int = 16
    files_per_upload: int = 500  # adapter files in one bulk request
    single_uploads: int = 100  # tasks registered one PUT at a time, for comparison
    resident: int = 256  # adapters on the device after the restart
    zipf_s: float = 1.1
    duration_s: float = 20.0  # each Zipf load, after `warmup_s`
    warmup_s: float = 5.0
    concurrency: int = 16
    first_predictions: int = 20  # tasks whose first prediction after the restart is timed
    image_size: int = 32
    port: int = 8124
    dtype: str = "float32"  # the replica's serving precision, which its adapters are held in too


def run_scale(spec: ScaleSpec, out_dir: Path) -> dict:
    with local_serve(spec.port, "mosaserve-scale-") as (url, work_dir):
        return scale_on_cluster(spec, url, work_dir, out_dir)


def scale_on_cluster(spec: ScaleSpec, url: str, work_dir: Path, out_dir: Path) -> dict:
    from ray import serve

    files = _adapter_files(spec)
    tasks, image = sorted(files), noise_png(spec.image_size)
    empty_ready_s = deploy_and_wait(build_app(_config(spec, work_dir, resident=spec.tasks)), APP, url)
    admin_url = json.loads(_get(url + "/healthz"))["admin_url"]
    memory_before = serving_memory_mib(url)
    doc: dict = {"spec": asdict(spec), "machine": machine_description(),
                 "file_bytes": round(statistics.mean(len(f) for f in files.values()))}
    doc["registration"] = _register(Client(admin_url, token=TOKEN), files, spec)
    every_task = _load(url, lambda i, _: tasks[i], image, spec.concurrency, requests=len(tasks))
    doc["memory"] = _memory(memory_before, serving_memory_mib(url), spec.tasks, doc["file_bytes"], every_task)
    doc["listing"] = _listing(url)
    doc["metrics_after_every_task"] = _scrape(url)
    doc["zipf_all_resident"] = _zipf_load(url, tasks, image, spec)
    doc["metrics"] = _scrape(url)  # the busiest tasks are clear now
    serve.delete(APP)
    ready_s = deploy_and_wait(build_app(_config(spec, work_dir, resident=spec.resident)), APP, url)
    doc["restart"] = {"ready_s": round(ready_s, 2), "empty_application_ready_s": round(empty_ready_s, 2),
                      **_first_predictions(url, tasks, image, spec)}
    doc["zipf_resident"] = _zipf_load(url, tasks, image, spec)
    doc["zipf_throughput_ratio"] = round(doc["zipf_resident"]["requests_per_s"]
                                         / doc["zipf_all_resident"]["requests_per_s"], 3)
    serve.delete(APP)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scale.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "scale.md").write_text(format_scale(doc) + "\n")
    return doc


def _config(spec: ScaleSpec, root: Path, resident: int) -> ServeConfig:
    return ServeConfig.of(backbone=spec.backbone, store_dir=str(root / "store"), replicas=1, replica_num_cpus=1,
                          max_resident=resident, admin_token=TOKEN, admin_port=0, registration_timeout_s=120,
                          dtype=spec.dtype)


def _adapter_files(spec: ScaleSpec) -> dict[str, bytes]:
    """N distinct merged MoSA files: one random task, its tensors perturbed per task (seeded)."""
    backbone, info = load_backbone(spec.backbone)
    template, _ = random_task(backbone, info, "mosa", spec.r, seed=0)
    generator, files = torch.Generator().manual_seed(0), {}
    for i in range(spec.tasks):
        tensors = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in template.tensors.items()}
        files[f"task{i:05d}"] = encode_adapter(template.header, tensors)
    return files


def _register(admin: Client, files: dict[str, bytes], spec: ScaleSpec) -> dict:
    names = sorted(files)
    single, bulk = names[: spec.single_uploads], names[spec.single_uploads :]
    single_s = [_timed(lambda t=t: admin.register(t, files[t]))[0] for t in single]
    began, request_s, everywhere = time.perf_counter(), [], True
    for start in range(0, len(bulk), spec.files_per_upload):
        seconds, answer = _timed(lambda s=start: admin.register_many(
            {t: files[t] for t in bulk[s : s + spec.files_per_upload]}))
        request_s.append(seconds)
        everywhere = everywhere and answer["servable_everywhere"]
    bulk_s = time.perf_counter() - began
    live = names[0]
    noop_s = [_timed(lambda: admin.register(live, files[live]))[0] for _ in range(20)]
    return {"single": {"uploads": len(single), "per_s": round(len(single) / sum(single_s), 1),
                       "p50_ms": _ms(statistics.median(single_s))},
            "bulk": {"tasks": len(bulk), "requests": len(request_s), "seconds": round(bulk_s, 2),
                     "tasks_per_s": round(len(bulk) / bulk_s, 1), "request_p50_ms": _ms(statistics.median(request_s)),
                     "servable_everywhere": everywhere},
            "noop_reupload_p50_ms": _ms(statistics.median(noop_s))}


def _memory(before_mib: float, after_mib: float, tasks: int, file_bytes: int, every_task: dict) -> dict:
    per_task = (after_mib - before_mib) * 2**20 / tasks
    return {"replica_before_mib": before_mib, "replica_after_mib": after_mib, "bytes_per_task": round(per_task),
            "per_task_over_file": round(per_task / file_bytes, 3), "served_every_task": every_task}


def _listing(url: str) -> dict:
    first_s, page = _timed(lambda: _get(url + "/v1/tasks"))
    all_s, listed = _timed(lambda: Client(url).tasks())
    return {"first_page_bytes": len(page), "first_page_ms": _ms(first_s), "tasks_listed": len(listed),
            "all_pages_ms": _ms(all_s)}


def _scrape(url: str) -> dict:
    seconds, text = _timed(lambda: _get(url + "/metrics"))
    families = list(text_string_to_metric_families(text.decode()))
    task_labels = {s.labels["task"] for f in families for s in f.samples if "task" in s.labels}
    return {"series": sum(len(f.samples) for f in families), "bytes": len(text), "task_labels": len(task_labels),
            "scrape_ms": _ms(seconds)}


def _zipf_load(url: str, tasks: list[str], image: bytes, spec: ScaleSpec) -> dict:
    mix = make_mix("zipf", tasks, spec.zipf_s)
    pick = lambda _, rng: mix.draw(rng, 1)[0]  # noqa: E731
    _load(url, pick, image, spec.concurrency, duration_s=spec.warmup_s)
    before = _settled_cache_counters(url)
    load = _load(url, pick, image, spec.concurrency, duration_s=spec.duration_s)
    after = _settled_cache_counters(url)
    lookups = after["lookups"] - before["lookups"]
    misses = after["misses"] - before["misses"]
    return {**load, "resident_hit_rate": round(1 - misses / lookups, 4) if lookups else None}


def _settled_cache_counters(url: str, quiet_s: float = 3.0, reads: int = 10) -> dict:
    """The counters once /metrics has caught up with a load that ended: a replica's figures reach /metrics
    with its heartbeat, a second or two late, so read until two reads `quiet_s` apart agree."""
    last = _cache_counters(url)
    for _ in range(reads):
        time.sleep(quiet_s)
        previous, last = last, _cache_counters(url)
        if previous == last:
            break
    return last


def _cache_counters(url: str) -> dict:
    """Adapter lookups (distinct tasks per batch, summed) and misses (reads back from the store) so far."""
    families = {f.name: f for f in text_string_to_metric_families(_get(url + "/metrics").decode())}

    def total(family: str, sample: str) -> float:
        return sum(s.value for s in families[family].samples if s.name == sample) if family in families else 0.0
    return {"lookups": total("mosaserve_batch_distinct_tasks", "mosaserve_batch_distinct_tasks_sum"),
            "misses": total("mosaserve_adapter_host_reloads", "mosaserve_adapter_host_reloads")}


def _first_predictions(url: str, tasks: list[str], image: bytes, spec: ScaleSpec) -> dict:
    picked = random.Random(1).sample(tasks, min(spec.first_predictions, len(tasks)))
    client = Client(url)
    seconds = [_timed(lambda t=t: client.predict(t, image))[0] for t in picked]
    return {"first_prediction_p50_ms": _ms(statistics.median(seconds)), "first_prediction_max_ms": _ms(max(seconds))}


def _load(url: str, pick, image: bytes, concurrency: int, duration_s: float | None = None,
          requests: int | None = None) -> dict:
    """A closed loop whose request i asks for task `pick(i, rng)`."""
    rng = random.Random(0)

    async def send(session, index: int) -> bool:
        async with session.post(f"{url}/v1/tasks/{pick(index, rng)}/predict", data=image,
                                headers={"Content-Type": "image/png"}) as response:
            await response.read()
            return response.status == 200
    done = asyncio.run(closed_loop(send, concurrency, duration_s, requests))
    return {"requests_per_s": done.pop("per_s"), **done}


def _timed(call):
    began = time.perf_counter()
    result = call()
    return time.perf_counter() - began, result


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def format_scale(doc: dict) -> str:
    spec, reg, mem = doc["spec"], doc["registration"], doc["memory"]
    rows = [
        ("tasks", f"{spec['tasks']:,} (files of {doc['file_bytes']:,} bytes, r = {spec['r']}, served in "
                  f"{spec.get('dtype', 'float32')})"),
        ("single uploads", f"{reg['single']['per_s']}/s, p50 {reg['single']['p50_ms']} ms"),
        ("bulk registration", f"{reg['bulk']['tasks']:,} tasks in {reg['bulk']['seconds']} s "
                              f"({reg['bulk']['tasks_per_s']}/s, {reg['bulk']['requests']} requests of "
                              f"{spec['files_per_upload']}, p50 {reg['bulk']['request_p50_ms']} ms), servable "
                              f"everywhere: {reg['bulk']['servable_everywhere']}"),
        ("no-op re-upload", f"p50 {reg['noop_reupload_p50_ms']} ms"),
        ("replica memory", f"{mem['replica_before_mib']} -> {mem['replica_after_mib']} MiB: "
                           f"{mem['bytes_per_task']:,} bytes per task, {mem['per_task_over_file']}x the file"),
        ("GET /v1/tasks", f"first page {doc['listing']['first_page_bytes']:,} bytes in "
                          f"{doc['listing']['first_page_ms']} ms; all {doc['listing']['tasks_listed']:,} in "
                          f"{doc['listing']['all_pages_ms']} ms"),
        ("/metrics after a prediction of every task", f"{doc['metrics_after_every_task']['series']:,} series, "
                                                      f"{doc['metrics_after_every_task']['task_labels']} task labels"),
        ("/metrics after the Zipf load", f"{doc['metrics']['series']:,} series, {doc['metrics']['bytes']:,} bytes, "
                                         f"{doc['metrics']['task_labels']} task labels"),
        ("restart", f"ready in {doc['restart']['ready_s']} s (the application with no task: "
                    f"{doc['restart']['empty_application_ready_s']} s); first prediction p50 "
                    f"{doc['restart']['first_prediction_p50_ms']} ms, max {doc['restart']['first_prediction_max_ms']} ms"),
    ]
    for key, label in (("zipf_all_resident", "all resident"), ("zipf_resident", f"{spec['resident']} resident")):
        z = doc[key]
        rows.append((f"Zipf load, {label}", f"{z['requests_per_s']} req/s, p50 {z['p50_ms']} ms, p99 {z['p99_ms']} ms, "
                                            f"hit rate {z['resident_hit_rate']}, failed {z['failed']}"))
    rows.append(("Zipf throughput, resident / all", str(doc["zipf_throughput_ratio"])))
    return "\n".join(["| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])
