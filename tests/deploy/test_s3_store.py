"""The served application on an S3 store (a real S3-compatible server on loopback): no filesystem path in the
config is shared between its processes, and adapters are also registered by reference to an object."""

from __future__ import annotations

import pytest
import requests
import s3fs

from mosaserve.deploy.config import ServeConfig
from mosaserve.runtime.task_ids import BACKBONE_TASK

from .conftest import APP, TOKEN, Service, deploy, saved_tiny_backbone, wait_healthy
from .test_service import expected_top, png


@pytest.fixture(scope="module")
def s3_service(ray_cluster, s3_env, tmp_path_factory) -> Service:
    """Two replicas whose store is a bucket; each process caches the files it fetched in a folder of its own."""
    from ray import serve

    from mosaserve.loadtests.local_s3 import new_bucket

    root = tmp_path_factory.mktemp("s3-service")
    spec, backbone, info = saved_tiny_backbone(root)
    config = ServeConfig.of(backbone=spec, store_dir=new_bucket() + "/adapters", store_cache_dir=str(root / "cache"),
                            jobs_dir=str(root / "jobs"), replicas=2, replica_num_cpus=0.5, torch_threads=1,
                            max_adapter_bytes=1024 * 1024, admin_token=TOKEN, heartbeat_s=0.5, admin_port=None)
    deploy(config)
    wait_healthy(ray_cluster, 2)
    yield Service(ray_cluster, config, backbone, info)
    serve.delete(APP)


def put_source(service: Service, task_id: str, source) -> requests.Response:
    return requests.put(f"{service.url}/v1/tasks/{task_id}", json={"source": source}, timeout=60,
                        headers={"Authorization": f"Bearer {TOKEN}"})


def test_a_task_uploaded_or_named_by_an_s3_url_is_served_by_every_replica_and_survives_a_restart(s3_service):
    from ray import serve

    from mosaserve.client import Client

    uploaded, uploaded_model = s3_service.adapter(seed=71)
    answer = s3_service.put("uploaded", uploaded)
    assert answer.status_code == 201 and answer.json()["servable_everywhere"] and answer.json()["replicas"] == 2
    referenced, referenced_model = s3_service.adapter(seed=72, classes=4)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = s3_service.config.runtime.store_dir.removeprefix("s3://").split("/")[0]
    fs.pipe_file(f"{bucket}/exports/referenced.safetensors", referenced)
    answer = put_source(s3_service, "referenced", f"s3://{bucket}/exports/referenced.safetensors")
    assert answer.status_code == 201 and answer.json()["servable_everywhere"], answer.text
    assert Client(s3_service.url, token=TOKEN).register("referenced", f"s3://{bucket}/exports/referenced.safetensors"
                                                         )["task"]["version"] == 1  # the same bytes: no new version
    expected = {"uploaded": expected_top(s3_service, uploaded_model, png())[0],
                "referenced": expected_top(s3_service, referenced_model, png())[0]}
    for task_id, label in expected.items():
        for _ in range(4):  # both replicas take turns
            assert s3_service.predict(task_id, png()).json()["predictions"][0]["top_k"][0]["label"] == label

    serve.delete(APP)
    deploy(s3_service.config.with_settings(store_cache_dir=s3_service.config.runtime.store_cache_dir + "-restarted"))
    wait_healthy(s3_service.url, 2)
    listed = {t["task_id"]: t["version"] for t in requests.get(f"{s3_service.url}/v1/tasks", timeout=30).json()["tasks"]}
    assert listed == {"uploaded": 1, "referenced": 1, BACKBONE_TASK: None}
    for task_id, label in expected.items():  # fetched from the bucket into an empty cache
        assert s3_service.predict(task_id, png()).json()["predictions"][0]["top_k"][0]["label"] == label


@pytest.mark.parametrize(("source", "status", "says"), [
    ("s3://{bucket}/exports/none.safetensors", 422, "FileNotFoundError"),
    ("s3://no-such-bucket-anywhere/a.safetensors", 422, "cannot read"),
    ("/etc/passwd", 422, "s3://bucket/key"),
    ("s3://{bucket}/exports/not-an-adapter.bin", 422, "safetensors"),
    (7, 400, "source"),
])
def test_a_source_that_cannot_be_read_or_is_no_adapter_is_a_clear_error_and_stores_nothing(s3_service, source,
                                                                                            status, says):
    bucket = s3_service.config.runtime.store_dir.removeprefix("s3://").split("/")[0]
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(f"{bucket}/exports/not-an-adapter.bin", b"\x00" * 64)
    answer = put_source(s3_service, "bad", source.format(bucket=bucket) if isinstance(source, str) else source)
    assert answer.status_code == status and says in answer.json()["error"], answer.text
    assert requests.get(f"{s3_service.url}/v1/tasks/bad", timeout=30).status_code == 404


def test_a_source_over_the_size_limit_is_refused_without_reading_it_whole(s3_service):
    bucket = s3_service.config.runtime.store_dir.removeprefix("s3://").split("/")[0]
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(f"{bucket}/exports/huge.bin", b"\x00" * (2 << 20))
    answer = put_source(s3_service, "huge", f"s3://{bucket}/exports/huge.bin")
    assert answer.status_code == 413 and "1048576" in answer.json()["error"]
