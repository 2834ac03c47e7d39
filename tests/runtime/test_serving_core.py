"""What the served application relies on: replicas sharing one store, served batches, merged metrics."""

import copy

import pytest
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mosaserve.adapters.backbone import save_backbone
from mosaserve.adapters.errors import AdapterFileError
from mosaserve.runtime.errors import UnknownTaskError
from mosaserve.deploy.observability.metrics import BatchMetrics, RequestMetrics, exposition, merge_expositions
from mosaserve.runtime.task_runtime import RuntimeConfig, TaskRuntime
from mosaserve.runtime.task_ids import BACKBONE_TASK

from .helpers import adapter_bytes, random_model


@pytest.fixture
def shared_store(tiny_backbone, tiny_spec, tmp_path):
    """Two runtimes (as two replicas) over one store, with the backbone from one checkpoint file."""
    backbone, info = tiny_backbone
    save_backbone(backbone, tmp_path / "backbone.safetensors")
    spec = type(tiny_spec)(tiny_spec.name, tiny_spec.kwargs, str(tmp_path / "backbone.safetensors"))
    config = RuntimeConfig(backbone=spec, store_dir=str(tmp_path / "store"))
    return TaskRuntime(config), TaskRuntime(config), backbone, info


def test_a_registration_on_one_replica_reaches_the_other_by_sync(shared_store):
    first, second, backbone, info = shared_store
    model = random_model(copy.deepcopy(backbone), seed=3)
    first.register("cats", adapter_bytes(model, info))
    assert "cats" not in second.tasks()
    report = second.sync()
    assert [(t, v) for t, v, _ in report.loaded] == [("cats", 1)] and report.loaded[0][2] > 0
    second.register("cats", adapter_bytes(random_model(copy.deepcopy(backbone), seed=4), info))
    assert second.tasks()["cats"].version == 2  # versions are numbered across processes
    assert [(t, v) for t, v, _ in first.sync().loaded] == [("cats", 2)]
    first.remove("cats")
    assert second.sync().removed == ["cats"] and second.tasks() == {}
    assert second.sync().loaded == []  # nothing changed: nothing reloaded


def test_a_damaged_stored_file_is_reported_and_the_other_tasks_still_load(shared_store):
    first, second, backbone, info = shared_store
    for task, seed in (("a", 1), ("b", 2)):
        first.register(task, adapter_bytes(random_model(copy.deepcopy(backbone), seed=seed), info))
    path = first.store.path_of(first.store.entries()["a"])
    path.write_bytes(path.read_bytes()[:-10])
    report = second.sync()
    assert [t for t, _, _ in report.loaded] == ["b"]
    assert report.failed[0][0] == "a" and "a" not in second.tasks()
    restarted = TaskRuntime(first.config)  # a restart reports it too, and serves the rest
    assert [t for t, _ in restarted.restored.failed] == ["a"] and list(restarted.tasks()) == ["b"]


def test_a_restart_reads_headers_only_and_each_task_s_tensors_on_its_first_use(shared_store):
    first, _, backbone, info = shared_store
    models = {t: random_model(copy.deepcopy(backbone), seed=seed, classes=4) for t, seed in (("a", 6), ("b", 7))}
    for task_id, model in models.items():
        first.register(task_id, adapter_bytes(model, info))
    image = torch.full((3, 20, 20), 70, dtype=torch.uint8)
    served = first.serve_batch([image, image], ["a", "b"], [4, 4]).answers[0]
    assert first.bank.host_count() == 0  # on a CPU the resident form is the only copy of a stored task
    restarted = TaskRuntime(first.config)
    assert sorted(restarted.tasks()) == ["a", "b"] and restarted.bank.host_count() == 0
    assert restarted.bank.resident_count() == 0  # nothing loaded yet
    again = restarted.serve_batch([image], ["a"], [4]).answers[0]
    assert again.top == served.top and restarted.bank.resident_count() == 1

    path = first.store.path_of(first.store.entries()["b"])
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the tensor data: the header reads, the content hash does not match
    path.write_bytes(bytes(data))
    damaged = TaskRuntime(first.config)
    assert sorted(damaged.tasks()) == ["a", "b"]  # known by its header...
    with pytest.raises(AdapterFileError, match="sha256"):
        damaged.serve_batch([image], ["b"], [4])  # ...and refused, naming why, when first served
    assert damaged.serve_batch([image], ["a"], [4]).answers[0].top == served.top


def test_served_batch_answers_unknown_rows_alone_and_splits_compute_time(shared_store):
    runtime, _, backbone, info = shared_store
    model = random_model(copy.deepcopy(backbone), seed=5, classes=4)
    runtime.register("t", adapter_bytes(model, info))
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    outcome = runtime.serve_batch([image] * 3, ["t", "nope", BACKBONE_TASK], [2, 2, 2])
    answer, unknown, bare = outcome.answers
    assert isinstance(unknown, UnknownTaskError)
    assert answer.version == 1 and len(answer.top) == 2 and answer.top[0][1] >= answer.top[1][1]
    with torch.inference_mode():
        probs = torch.softmax(model(runtime.preprocess(image)), -1)[0]
    assert answer.top[0] == (f"class{int(probs.argmax())}", pytest.approx(float(probs.max()), abs=1e-5))
    assert bare.version is None and len(bare.embedding) == backbone.num_features == 32
    assert outcome.distinct_tasks == 2
    timings = outcome.timings
    assert 0 < timings.adapter_s < timings.total_s and timings.backbone_s > 0


def test_metrics_of_several_processes_merge_under_a_replica_label():
    registries = {name: CollectorRegistry() for name in ("ingress", "r1", "r2")}
    RequestMetrics(registries["ingress"]).requests.labels("cats").inc(3)
    for size, name in ((4, "r1"), (8, "r2")):
        BatchMetrics(registries[name]).batch_size.observe(size)
    text = merge_expositions({n: exposition(r) for n, r in registries.items()}).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert all(name.startswith(("mosaserve_", "process_")) for name in families)  # ours, and the standard process ones
    memory = {s.labels["replica"]: s.value for s in families["process_resident_memory_bytes"].samples}
    assert set(memory) == {"ingress", "r1", "r2"} and all(v > 10 * 2**20 for v in memory.values())
    counts = {s.labels["replica"]: s.value for s in families["mosaserve_batch_size"].samples
              if s.name == "mosaserve_batch_size_sum"}
    assert counts == {"r1": 4.0, "r2": 8.0}
    requests = [s for s in families["mosaserve_requests"].samples if s.name == "mosaserve_requests_total"]
    assert [(s.labels, s.value) for s in requests] == [({"task": "cats", "replica": "ingress"}, 3.0)]
    assert "_created" not in text
    # One header per family however many processes report it (Prometheus refuses a repeated TYPE line).
    assert text.count("# TYPE mosaserve_batch_size histogram") == text.count("# HELP mosaserve_batch_size ") == 1
    assert text.count("# TYPE process_resident_memory_bytes gauge") == 1
