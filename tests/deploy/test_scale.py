"""The scale measurement end to end, at toy scale, on the shared test cluster (its own module: it deploys on "/")."""

from __future__ import annotations

import json


def test_the_scale_run_measures_registration_memory_listing_metrics_restart_and_residency(ray_cluster, tmp_path):
    from mosaserve.loadtests.scale import ScaleSpec, scale_on_cluster

    from ..conftest import TINY_VIT

    spec = ScaleSpec(tasks=40, backbone=TINY_VIT, r=4, files_per_upload=15, single_uploads=5, resident=4,
                     duration_s=2.0, warmup_s=0.5, concurrency=4, first_predictions=3, image_size=20)
    doc = scale_on_cluster(spec, ray_cluster, tmp_path / "work", tmp_path / "out")
    registration = doc["registration"]
    assert registration["single"]["uploads"] == 5 and registration["bulk"]["tasks"] == 35
    assert registration["bulk"]["requests"] == 3 and registration["bulk"]["servable_everywhere"]
    assert doc["memory"]["served_every_task"]["answered"] == 40 and doc["memory"]["served_every_task"]["failed"] == 0
    assert doc["listing"]["tasks_listed"] == 41  # and the bare backbone
    assert doc["metrics_after_every_task"]["task_labels"] == 40  # every task had traffic: under the bound of 100
    assert 1 <= doc["metrics"]["task_labels"] <= 41 and doc["metrics"]["series"] < 5_000
    all_resident, few_resident = doc["zipf_all_resident"], doc["zipf_resident"]
    assert all_resident["failed"] == few_resident["failed"] == 0 and all_resident["answered"] > 0
    assert all_resident["resident_hit_rate"] == 1.0  # every adapter was on the device already
    assert few_resident["resident_hit_rate"] < 1.0  # 4 resident of 40 under a Zipf load: some misses
    assert doc["restart"]["ready_s"] > 0 and doc["restart"]["first_prediction_max_ms"] > 0
    assert json.loads((tmp_path / "out" / "scale.json").read_text())["spec"]["tasks"] == 40
    assert "| Zipf throughput, resident / all |" in (tmp_path / "out" / "scale.md").read_text()
