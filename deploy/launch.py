"""`mosaserve serve`: start (or join) a Ray cluster, run the application, print where it is, wait."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from .app import build_app
from .config import ServeFile
from .process import init_ray

APP_NAME = "mosaserve"


def run_service(file: ServeFile, address: str | None = None, sample: Path | None = None) -> None:
    import ray
    from ray import serve

    init_ray(address=address, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": file.host, "port": file.port})
        serve.run(build_app(file.settings), name=APP_NAME, route_prefix=file.route_prefix)
        admin_url = serve.get_deployment_handle("TaskBoard", APP_NAME).status.remote().result()["admin_url"]
        print(banner(file, sample, admin_url), flush=True)
        _wait_for_signal()
    finally:
        serve.shutdown()
        ray.shutdown()


def banner(file: ServeFile, sample: Path | None, admin_url: str | None = None) -> str:
    base = f"http://{'127.0.0.1' if file.host in ('0.0.0.0', '::') else file.host}:{file.port}{file.route_prefix.rstrip('/')}"
    token = file.settings.resolved_admin_token()
    image = sample or Path("image.png")
    task = "mnist" if sample else "<task_id>"
    lines = [
        "mosaserve is serving.",
        f"  API docs        {base}/docs",
        f"  tasks           {base}/v1/tasks",
        f"  health          {base}/healthz",
        f"  metrics         {base}/metrics",
        "",
        "Classify an image:",
        f"  curl -s -X POST -H 'Content-Type: image/png' --data-binary @{image} {base}/v1/tasks/{task}/predict",
        "Register or replace a task (admin" + (", on the task board's own port, off the serving path):" if admin_url
                                               else "):"),
        f"  curl -s -X PUT -H 'Authorization: Bearer {token or '<admin token>'}' --data-binary @adapter.safetensors "
        f"{admin_url or base}/v1/tasks/<task_id>",
        "Stop with Ctrl-C.",
    ]
    return "\n".join(lines)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
