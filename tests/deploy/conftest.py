"""One local Ray cluster for every Ray test (loopback only, temp files in pytest's tmp), and a served app."""

from __future__ import annotations

import copy
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import torch

from mosaserve.adapters.backbone import BackboneSpec, load_backbone, save_backbone
from mosaserve.deploy.config import ServeConfig
from mosaserve.deploy.process import init_ray

from ..conftest import TINY_VIT
from ..runtime.helpers import adapter_bytes, random_model

TOKEN = "test-admin-token"
APP = "mosaserve"


def live_actors(name_part: str) -> list[dict]:
    """Ray's records (Name, Pid...) of the live actors whose names contain `name_part` (a deployment is `#Name#`)."""
    from ray._private import state  # the public state API needs the dashboard, which the test cluster lacks

    return [a for a in state.actors().values() if a["State"] == "ALIVE" and name_part in a["Name"]]


def crash_actor(name_part: str) -> None:
    """Kills the one live actor whose name contains `name_part`, as a crash would, and returns only once its
    process is gone: ray.kill is asynchronous, and a dying replica could otherwise still write files."""
    import psutil
    import ray

    found = live_actors(name_part)
    assert len(found) == 1, found
    process = psutil.Process(found[0]["Pid"])
    ray.kill(ray.get_actor(found[0]["Name"], namespace="serve"), no_restart=True)
    process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    import ray
    from ray import serve

    port = free_port()
    init_ray(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    try:
        serve.shutdown()
    except ray.exceptions.RayActorError:
        pass  # on a loaded machine Serve may be restarting a proxy it then cancels: it is going anyway
    finally:
        ray.shutdown()


@dataclass
class Service:
    url: str
    config: ServeConfig
    backbone: torch.nn.Module
    info: object

    def adapter(self, seed: int, classes: int = 3, method: str = "mosa"):
        """A random adapter for the served backbone: (file bytes, the model it came from)."""
        model = random_model(copy.deepcopy(self.backbone), seed=seed, classes=classes, method=method)
        return adapter_bytes(model, self.info), model

    def put(self, task_id: str, data: bytes, token: str | None = TOKEN) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.put(f"{self.url}/v1/tasks/{task_id}", data=data, headers=headers, timeout=60)

    def predict(self, task_id: str, body: bytes, content_type: str = "image/png", **params) -> requests.Response:
        return requests.post(f"{self.url}/v1/tasks/{task_id}/predict", data=body, params=params,
                             headers={"Content-Type": content_type}, timeout=60)


def deploy(config: ServeConfig) -> None:
    from ray import serve

    from mosaserve.deploy.app import build_app

    serve.run(build_app(config), name=APP, route_prefix="/")


def wait_healthy(url: str, replicas: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = requests.get(f"{url}/healthz", timeout=10)
        if r.status_code == 200 and r.json()["replicas"] == replicas:
            return
        time.sleep(0.1)
    raise TimeoutError("service did not become healthy")


def saved_tiny_backbone(root: Path) -> tuple[BackboneSpec, torch.nn.Module, object]:
    """The tests' tiny ViT, saved as a checkpoint under `root` as a served backbone is: its spec, model and info."""
    backbone, info = load_backbone(TINY_VIT)
    save_backbone(backbone, root / "backbone.safetensors")
    return BackboneSpec(TINY_VIT.name, TINY_VIT.kwargs, str(root / "backbone.safetensors")), backbone, info


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory) -> Service:
    """Two replicas over a tiny ViT loaded from a checkpoint file, small limits to test them."""
    from ray import serve

    root: Path = tmp_path_factory.mktemp("service")
    spec, backbone, info = saved_tiny_backbone(root)
    config = ServeConfig.of(
        backbone=spec,
        store_dir=str(root / "store"), replicas=2, replica_num_cpus=0.5, torch_threads=1, max_batch_size=8,
        batch_wait_timeout_s=0.02, admin_token=TOKEN, max_request_bytes=256 * 1024, max_image_pixels=1_000_000,
        max_images_per_request=4, max_request_pixels=2_000_000, max_adapter_bytes=1024 * 1024, heartbeat_s=0.5,
        max_pixels_in_flight=3_000_000,  # one request at the per-request limit in flight, not two
        datasets_root=str(root / "datasets"), admin_port=0,
    )
    (root / "datasets").mkdir()
    deploy(config)
    wait_healthy(ray_cluster, 2)
    yield Service(ray_cluster, config, backbone, info)
    serve.delete(APP)
