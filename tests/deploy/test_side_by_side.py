"""The side-by-side comparison end to end, at toy scale, on the shared test cluster.

Its own module: the comparison deploys its systems on "/", where the `service` fixture's
application lives while a module using it runs."""

from __future__ import annotations

import json


def test_side_by_side_measures_every_system_in_one_run(ray_cluster, tmp_path):
    from mosaserve.loadtests.side_by_side import CompareSpec, compare_on_cluster

    from ..conftest import TINY_VIT

    spec = CompareSpec(backbone=TINY_VIT, task_counts=(3,), mixes=("uniform",), rates=(5, 10), duration_s=1.0,
                       warmup_s=0.5, r=4, max_models=(-1, 1), registrations=2, registration_rounds=2, image_size=20,
                       slo_ms=5000)
    doc = compare_on_cluster(spec, ray_cluster, tmp_path / "work", tmp_path / "out")
    runs = doc["runs"]
    assert list(runs) == ["mosaserve, bare backbone", "mosaserve, 3 tasks, uniform",
                          "per-task models (all per replica), 3 tasks, uniform",
                          "per-task models (1 per replica), 3 tasks, uniform"]
    for name, run in runs.items():
        assert run["max_rate_within_slo"] == 10.0, name  # a 5 s SLO: both rates pass on every system
        assert run["at_max_rate"]["errors"] == 0 and run["goodput_at_slo_rps"] > 0, name
    # Uploads through the main port (proxy, ingress, board) and straight to the board's admin port.
    assert list(doc["registration_storms"]) == list(doc["upload_costs"]) == ["main", "admin"]
    for route, storm in doc["registration_storms"].items():
        # Two bursts of two uploads of one task of the route's own: created once, then replaced three times.
        assert storm["registrations"]["statuses"] == {"201": 1, "200": 3}, route
        assert storm["verdict"]["failed_requests"] == 0, route
    for route, cost in doc["upload_costs"].items():  # CPU per upload by process role; its size depends on the machine
        assert cost["uploads"] == cost["accepted"] == 2 and {"TaskBoard", "TaskReplica"} <= set(cost["cpu_ms_per_upload"])
    predicted = doc["prediction_cost"]  # CPU per prediction by process role, for mosaserve and each baseline
    assert list(predicted) == ["mosaserve", "per-task models (all per replica)", "per-task models (1 per replica)"]
    for system, cost in predicted.items():
        assert cost["answered"] == cost["predictions"] > 0 and "ProxyActor" in cost["cpu_ms_per_prediction"], system
    assert {"Ingress", "TaskReplica"} <= set(predicted["mosaserve"]["cpu_ms_per_prediction"])
    assert "PerTaskModels" in predicted["per-task models (all per replica)"]["cpu_ms_per_prediction"]
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "Upload cost via the main port" in table and "Upload cost via the admin port" in table
    assert "Registration burst via the admin port" in table and "CPU ms per prediction" in table
    # Every system met the SLO at the top rate: the table must not pass that off as a measured capacity.
    assert all(f"| {name} | >=10.0 |" in table for name in runs)
    assert "Met the SLO at the top swept rate (10 req/s), so capacity not found" in table
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["spec"]["max_models"] == [-1, 1]
