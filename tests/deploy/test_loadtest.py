"""Load tests against the real service: the CLI's scenarios, registrations under load, and the
per-task-model baseline answering the same as mosaserve."""

from __future__ import annotations

import json

import requests

from mosaserve.cli import main
from mosaserve.loadtests.per_task_models import per_task_models_app
from mosaserve.loadtests.inputs import noise_png
from mosaserve.loadtests.runner import MODEL_ID_HEADER

from .conftest import TOKEN


def test_steady_zipf_load_from_the_cli_reports_every_request(service, tmp_path, capsys):
    for i in range(3):
        assert service.put(f"lt{i}", service.adapter(seed=300 + i)[0]).status_code == 201
    out = tmp_path / "steady"
    code = main(["loadtest", "run", "--url", service.url, "--scenario", "steady", "--mix", "zipf", "--tasks", "lt0,lt1,lt2",
                 "--rate", "15", "--duration", "2", "--warmup", "0.5", "--slo-ms", "5000", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    overall = doc["overall"]
    assert overall["requests"] == 30 and overall["errors"] == 0 and overall["ok"] == 30
    assert overall["offered_rps"] == 15.0 and overall["goodput_rps"] > 0
    assert overall["p50_ms"] <= overall["p95_ms"] <= overall["p99_ms"] <= overall["max_ms"]
    assert sum(t["requests"] for t in doc["tasks"].values()) == 30 and doc["tasks"]["lt0"]["requests"] >= doc["tasks"]["lt2"]["requests"]
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")
    assert "| overall |" in capsys.readouterr().out


def test_multi_task_compares_one_request_with_a_request_per_task_at_every_task_count(service, tmp_path, capsys):
    for i in range(2):
        assert service.put(f"mt{i}", service.adapter(seed=320 + i)[0]).status_code == 201
    out = tmp_path / "multi"
    assert main(["loadtest", "run", "--url", service.url, "--scenario", "multi-task", "--tasks", "mt0,mt1,__backbone__",
                 "--duration", "1", "--concurrency", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert list(doc["levels"]) == ["1 tasks", "2 tasks", "3 tasks"]  # 1, 2, then 4 and 8 capped at the 3 given
    for level in doc["levels"].values():
        for row in level["ways"].values():
            assert row["images"] > 0 and row["failed"] == 0 and row["p50_ms"] <= row["p99_ms"]
        assert level["speedup"] > 0
    assert "images/s of one request over a request per task" in capsys.readouterr().out


def test_registrations_under_load_fail_no_request_and_every_upload_lands(service, tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    for i in range(2):
        (uploads / f"a{i}.safetensors").write_bytes(service.adapter(seed=400 + i)[0])
    assert service.put("steady", service.adapter(seed=410)[0]).status_code in (200, 201)
    out = tmp_path / "registrations"
    code = main(["loadtest", "run", "--url", service.url, "--scenario", "registrations", "--tasks", "steady,__backbone__",
                 "--rate", "10", "--duration", "4", "--warmup", "0.5", "--registrations", "6", "--adapters", str(uploads),
                 "--token", TOKEN, "--slo-ms", "5000", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["overall"]["errors"] == 0 and doc["verdict"]["failed_requests"] == 0
    assert doc["registrations"]["statuses"] == {"200": 3, "201": 3}  # three new tasks, then each replaced
    assert doc["registrations"]["servable_everywhere"] == 6
    versions = {t["task_id"]: t["version"] for t in requests.get(f"{service.url}/v1/tasks", timeout=30).json()["tasks"]}
    assert [versions[f"loadtest-{i}"] for i in range(3)] == [2, 2, 2]


def test_sweep_stops_after_two_rates_miss_the_slo(service, tmp_path):
    out = tmp_path / "sweep"
    # An SLO of 1 ms cannot be met over HTTP, so the sweep stops after its first two rates.
    assert main(["loadtest", "run", "--url", service.url, "--scenario", "sweep", "--mix", "backbone", "--rates", "4,8,16",
                 "--duration", "1", "--warmup", "0", "--slo-ms", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert list(doc["runs"]) == ["4", "8"] and doc["max_rate_within_slo"] is None and doc["goodput_at_slo_rps"] == 0.0
    assert (out / "latency-4.png").exists() and (out / "latency-8.png").exists()


def test_per_task_model_baseline_answers_as_mosaserve_does(service):
    from ray import serve

    assert service.put("same", service.adapter(seed=500, classes=4)[0]).status_code in (200, 201)
    image = noise_png(20, seed=1)
    ours = service.predict("same", image, top_k=4).json()["predictions"][0]["top_k"]
    serve.run(per_task_models_app(service.config, max_models=2), name="baseline", route_prefix="/baseline")
    try:
        url = f"{service.url}/baseline/v1/tasks/same/predict"
        answer = _baseline_answer(url, image)
        assert answer["label"] == ours[0]["label"] and abs(answer["probability"] - ours[0]["probability"]) < 1e-4
        missing = requests.post(url.replace("same", "nope"), data=image,
                                headers={"Content-Type": "image/png", MODEL_ID_HEADER: "nope"}, timeout=60)
        assert missing.status_code == 404
        assert requests.post(url, data=image, timeout=60).status_code == 400  # no multiplexing header
    finally:
        serve.delete("baseline")
    # In mosaserve's dtype, so that a bfloat16 comparison times bfloat16 models on both sides.
    serve.run(per_task_models_app(service.config.with_settings(dtype="bfloat16"), max_models=2), name="baseline",
              route_prefix="/baseline")
    try:
        answer = _baseline_answer(url, image)
        assert ours[0]["probability"] - ours[1]["probability"] > 0.05  # a clear winner, whatever the rounding
        assert answer["label"] == ours[0]["label"]
        # bfloat16 keeps 8 bits of mantissa: near, not equal (equal would mean it still ran in float32).
        assert 0 < abs(answer["probability"] - ours[0]["probability"]) < 0.02
    finally:
        serve.delete("baseline")


def _baseline_answer(url: str, image: bytes) -> dict:
    response = requests.post(url, data=image, headers={"Content-Type": "image/png", MODEL_ID_HEADER: "same"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["top_k"][0]


def test_soak_reports_latency_windows_and_the_memory_of_every_process(service, tmp_path):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "a.safetensors").write_bytes(service.adapter(seed=450)[0])
    out = tmp_path / "soak"
    assert main(["loadtest", "run", "--url", service.url, "--scenario", "soak", "--mix", "backbone", "--rate", "10",
                 "--duration", "6", "--warmup", "1", "--registration-every", "2", "--adapters", str(uploads),
                 "--token", TOKEN, "--slo-ms", "5000", "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["overall"]["errors"] == 0 and doc["registrations"]["accepted"] == 3
    windows = doc["soak"]["windows"]
    assert len(windows) == 5 and sum(w["requests"] for w in windows) == 60 and all(w["p99_ms"] for w in windows)
    memory = doc["soak"]["memory"]
    replicas = [name for name in memory if name.startswith("replica-")]
    assert len(replicas) == 2 and any(name.startswith("ingress-") for name in memory)
    assert all(100 < m["start_mib"] < 8000 and 100 < m["end_mib"] < 8000 for m in memory.values())


def test_overload_sends_the_slo_as_deadline_and_reports_every_level_and_the_recovery(service, tmp_path):
    out = tmp_path / "overload"
    # No answer can come back within 1 ms over HTTP and Ray, so every request must be shed at its deadline.
    assert main(["loadtest", "run", "--url", service.url, "--scenario", "overload", "--mix", "backbone", "--rate", "8",
                 "--duration", "1", "--warmup", "0", "--burst-seconds", "1", "--slo-ms", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    levels = doc["levels"]
    assert doc["capacity_rps"] == 8 and list(levels) == ["0.5x", "1x", "1.5x", "2x", "3x"]
    assert [level["requests"] for level in levels.values()] == [4, 8, 12, 16, 24]
    for level in levels.values():
        assert level["errors_by_status"] == {"504": level["requests"]} and level["shed"] == level["requests"]
        assert level["answers_after_deadline"] == 0 and level["client_timeouts"] == 0 and level["shed_p99_ms"] > 0
        assert level["goodput_rps"] == 0 and level["goodput_vs_capacity"] is None
    recovery = doc["recovery"]
    assert recovery["burst"]["shed"] == 24 and 0 < recovery["recovery_s"] < 1  # the last calm request missed too
    assert (out / "latency-3x.png").exists() and (out / "latency-burst.png").exists()


def test_train_while_serving_runs_a_sidecar_job_beside_the_load_until_its_task_is_live(service, tmp_path):
    out = tmp_path / "train"
    assert main(["loadtest", "run", "--url", service.url, "--scenario", "train-while-serving", "--mix", "backbone",
                 "--rate", "10", "--duration", "2", "--warmup", "0.5", "--train-seconds", "20", "--train-epochs", "1",
                 "--train-size", "60", "--token", TOKEN, "--slo-ms", "5000", "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["rate"] == 6.0 and doc["phases"]["steady"]["requests"] == 12 and doc["phases"]["training"]["requests"] == 120
    job = doc["training_job"]
    assert job["trainer"] == "sidecar" and job["state"] == "succeeded" and 0 < job["submit_to_live_s"] < 20
    assert 0 < doc["while_training"]["requests"] <= 120  # those due between submission and live
    verdict = doc["verdict"]
    assert verdict["failed_requests"] == 0 and verdict["client_timeouts"] == 0 and verdict["live_before_load_ended"]
    task = requests.get(f"{service.url}/v1/tasks/trained-under-load", timeout=30).json()
    assert task["method"] == "mosa" and task["num_classes"] == 10
