"""A local Ray cluster with Serve on a port, for measurement runs that deploy their own systems."""

from __future__ import annotations

import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..deploy.process import init_ray
from .metrics_sampler import resident_memory


@contextmanager
def local_serve(port: int, prefix: str) -> Iterator[tuple[str, Path]]:
    """(the Serve proxy's URL, a work folder); the cluster and the folder go when the block ends."""
    import ray
    from ray import serve

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        init_ray(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 _temp_dir=str(Path(tmp) / "ray"))
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            yield f"http://127.0.0.1:{port}", Path(tmp)
        finally:
            serve.shutdown()
            ray.shutdown()


def deploy_and_wait(app, name: str, url: str, path: str = "/healthz", timeout_s: float = 300.0) -> float:
    """Deploys `app` and waits until `url + path` answers 200; the seconds that took."""
    from ray import serve

    serve.run(app, name=name, route_prefix="/", blocking=False)
    return wait_for(lambda: _answers(url + path), timeout_s, f"{url}{path} to answer")


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Polls `condition` until it holds; the seconds that took."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.1)
    return time.monotonic() - began


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


def serving_memory_mib(url: str) -> float:
    """Resident memory of the serving replicas (mosaserve's ingress, board and sidecar left out)."""
    memory = resident_memory(url)
    serving = [v for name, v in memory.items() if name.startswith("replica-") or name == "service"]
    return round(sum(serving) / 2**20, 1)
