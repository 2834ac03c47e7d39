"""`mosaserve loadtest cluster`: the application on a Ray cluster of two nodes on this machine, its store in S3.

A head (127.0.0.2) and a worker (127.0.0.3), each started by its own `ray start` with one CPU, a temp folder
of its own and token authentication, loopback only; one serving replica on each, each node's HTTP proxy on a
port of its own (Serve's RAY_SERVE_WORKER_PROXY_HTTP_PORT). The store is an S3 bucket, and no filesystem path
in the config is shared: each replica caches the files it fetched in its node's temp folder. Checked and timed:
1. a task registered through each node's proxy is served, with the right answer, through both;
2. the worker node killed (SIGKILL, as a machine lost), then started again with an empty temp folder: until
   both replicas serve again, and every task answers right through the new worker's proxy.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..adapters.backbone import load_backbone
from ..adapters.embedded import EMBEDDED_BACKBONE
from ..adapters.file_format import encode_adapter
from ..adapters.images import decode_image
from ..adapters.preprocess import Preprocessor
from ..client import Client
from ..deploy.app import build_app
from ..deploy.config import ServeConfig
from ..deploy.process import RAY_ENV
from .inputs import noise_png
from .local_s3 import environment, local_s3_server, new_bucket
from .local_service import deploy_and_wait, wait_for
from .runtime_bench import machine_description, random_task

APP = "cluster"
TOKEN = "cluster-admin"
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


@dataclass(frozen=True)
class ClusterSpec:
    store: str | None = None  # s3://bucket/prefix; None: a fresh bucket on a local S3 server (moto)
    gcs_port: int = 6390
    head_http_port: int = 8131
    worker_http_port: int = 8132
    predictions: int = 8  # per task and proxy
    timeout_s: float = 300.0


def run_cluster(spec: ClusterSpec, out_dir: Path) -> dict:
    """Ray's processes on both nodes and this driver authenticate with one token, read by Ray when it is first
    imported: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN must be in the environment by then (the CLI sets them)."""
    if os.environ.get("RAY_AUTH_MODE") != "token" or not os.environ.get("RAY_AUTH_TOKEN"):
        raise RuntimeError("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN before ray is imported")
    with ExitStack() as stack:
        if spec.store is None:
            stack.enter_context(environment(stack.enter_context(local_s3_server())))
        store = spec.store or new_bucket() + "/adapters"
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mosaserve-cluster-")))
        cluster = TwoNodes(spec, work)
        stack.callback(cluster.stop)
        doc = _scenario(spec, store, cluster)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cluster.json").write_text(json.dumps(doc, indent=1))
    (out_dir / "cluster.md").write_text(format_cluster(doc) + "\n")
    return doc


class TwoNodes:
    """A head and a worker node, each a `ray start --block` process group of its own."""

    def __init__(self, spec: ClusterSpec, work: Path) -> None:
        self.spec, self.work, self.worker_starts = spec, work, 0
        self.head = self._start("head", ["--head", "--port", str(spec.gcs_port), "--node-ip-address", HEAD_IP,
                                         "--include-dashboard", "false", "--temp-dir", str(work / "ray")])
        self.worker = self.start_worker()

    def start_worker(self) -> subprocess.Popen:
        self.worker_starts += 1  # a fresh temp folder each time: a new machine's empty cache
        return self._start(f"worker-{self.worker_starts}",
                           ["--address", f"{HEAD_IP}:{self.spec.gcs_port}", "--node-ip-address", WORKER_IP],
                           {"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(self.spec.worker_http_port)})

    def _start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        tmp = self.work / name
        tmp.mkdir()
        ray = Path(sys.executable).with_name("ray")
        return subprocess.Popen(
            [str(ray), "start", "--block", "--num-cpus", "1", "--object-store-memory", str(256 << 20),
             "--disable-usage-stats", *args],
            env={**os.environ, **RAY_ENV, **(env or {}), "TMPDIR": str(tmp)}, start_new_session=True,
            stdout=open(self.work / f"{name}.log", "w"), stderr=subprocess.STDOUT)

    def cached_files(self) -> dict[str, int]:
        """Adapter files each node's replicas fetched from the bucket, in the node's own temp folder."""
        return {folder.name: len(list(folder.glob("mosaserve-store-cache/*.safetensors")))
                for folder in sorted(self.work.iterdir()) if folder.name == "head" or folder.name.startswith("worker-")}

    def kill_worker(self) -> None:
        _kill(self.worker)

    def stop(self) -> None:
        for node in (self.worker, self.head):
            _kill(node)


def _kill(node: subprocess.Popen) -> None:
    try:
        os.killpg(node.pid, signal.SIGKILL)  # the node's every process: they share its session
    except ProcessLookupError:
        pass
    node.wait(timeout=30)


def _scenario(spec: ClusterSpec, store: str, cluster: TwoNodes) -> dict:
    import ray
    from ray import serve

    ray.init(address=f"{HEAD_IP}:{spec.gcs_port}", _node_ip_address=HEAD_IP, log_to_driver=False)
    try:
        wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, spec.timeout_s, "both nodes to join")
        serve.start(http_options={"host": "127.0.0.1", "port": spec.head_http_port, "location": "EveryNode"})
        urls = {"head": f"http://127.0.0.1:{spec.head_http_port}", "worker": f"http://127.0.0.1:{spec.worker_http_port}"}
        config = ServeConfig.of(store_dir=store, replicas=2, replica_num_cpus=1, admin_token=TOKEN, admin_port=None,
                                jobs_dir=str(cluster.work / "jobs"))
        doc = {"spec": asdict(spec), "store": store, "machine": machine_description(),
               "ready_s": round(deploy_and_wait(build_app(config), APP, urls["head"], timeout_s=spec.timeout_s), 2)}
        wait_for(lambda: _healthy(urls["worker"], 2), spec.timeout_s, "the worker's proxy")
        doc["replica_nodes"] = _replica_nodes()
        tasks = _register_through_each(urls)
        doc["registered"] = {name: answer for name, (answer, _) in tasks.items()}
        doc["served"] = _served(urls, tasks, spec.predictions)
        doc["worker_restart"] = _restart_worker(cluster, urls, tasks, spec)
        doc["ok"] = _all_checks_pass(doc, spec.predictions)
        serve.shutdown()
        return doc
    finally:
        ray.shutdown()


def _register_through_each(urls: dict[str, str]) -> dict[str, tuple[dict, str]]:
    """One task through each node's proxy: {task: (the registration's answer, the label it must answer)}."""
    backbone, info = load_backbone(EMBEDDED_BACKBONE)
    image = Preprocessor(info)(decode_image(noise_png()))
    tasks = {}
    for seed, node in enumerate(urls):
        adapter, model = random_task(copy.deepcopy(backbone), info, "mosa", 16, seed=seed)
        with torch.inference_mode():
            label = adapter.header.labels[int(model(image).argmax())]
        answer = Client(urls[node], token=TOKEN).register(f"via-{node}", encode_adapter(adapter.header, adapter.tensors))
        tasks[f"via-{node}"] = {k: answer[k] for k in ("servable_everywhere", "replicas", "seconds")}, label
    return tasks


def _served(urls: dict[str, str], tasks: dict[str, tuple[dict, str]], predictions: int) -> dict:
    """Per proxy and task: how many of `predictions` answered the label the task's model gives alone."""
    image = noise_png()
    return {node: {task: sum(Client(url).predict(task, image, top_k=1)["predictions"][0]["top_k"][0]["label"] == label
                             for _ in range(predictions))
                   for task, (_, label) in tasks.items()}
            for node, url in urls.items()}


def _restart_worker(cluster: TwoNodes, urls: dict[str, str], tasks: dict, spec: ClusterSpec) -> dict:
    began = time.monotonic()
    cluster.kill_worker()
    wait_for(lambda: _healthy(urls["head"], 1), spec.timeout_s, "the service to notice the lost node")
    noticed = time.monotonic() - began
    served_meanwhile = _served({"head": urls["head"]}, tasks, spec.predictions)["head"]
    began = time.monotonic()
    cluster.worker = cluster.start_worker()
    wait_for(lambda: _healthy(urls["head"], 2) and _healthy(urls["worker"], 2), spec.timeout_s, "the restarted node")
    return {"lost_noticed_s": round(noticed, 2), "served_by_head_meanwhile": served_meanwhile,
            "restart_to_serving_s": round(time.monotonic() - began, 2), "replica_nodes": _replica_nodes(),
            "served_after": _served(urls, tasks, spec.predictions), "cached_files": cluster.cached_files()}


def _all_checks_pass(doc: dict, predictions: int) -> bool:
    restart = doc["worker_restart"]
    answers = [n for served in (doc["served"], restart["served_after"]) for by_task in served.values()
               for n in by_task.values()] + list(restart["served_by_head_meanwhile"].values())
    return (all(a["servable_everywhere"] and a["replicas"] == 2 for a in doc["registered"].values())
            and doc["replica_nodes"] == restart["replica_nodes"] == sorted([HEAD_IP, WORKER_IP])
            and all(n == predictions for n in answers))


def _replica_nodes() -> list[str]:
    """The node address of each live serving replica."""
    from ray._private import state  # the public state API needs the dashboard, which this cluster runs without

    return sorted(a["Address"]["IPAddress"] for a in state.actors().values()
                  if a["State"] == "ALIVE" and "#TaskReplica#" in a["Name"])


def _healthy(url: str, replicas: int) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
            return json.loads(response.read())["replicas"] == replicas
    except (OSError, ValueError, KeyError):
        return False


def format_cluster(doc: dict) -> str:
    restart = doc["worker_restart"]
    lines = [f"Two nodes ({HEAD_IP}, {WORKER_IP}), store {doc['store']}, replicas on {doc['replica_nodes']}",
             f"application ready in {doc['ready_s']} s", "",
             "| task | registered through | servable everywhere | replicas | seconds |", "| --- | --- | --- | ---: | ---: |"]
    for task, answer in doc["registered"].items():
        lines.append(f"| {task} | {task.removeprefix('via-')} | {answer['servable_everywhere']} | {answer['replicas']} "
                     f"| {answer['seconds']} |")
    predictions = doc["spec"]["predictions"]
    lines += ["", f"right answers of {predictions} per task, by the proxy asked:", ""]
    lines += [f"- {stage} through {node}: {answers}" for stage, served in
              (("before", doc["served"]), ("after the worker's restart", restart["served_after"]))
              for node, answers in served.items()]
    lines += ["", f"worker killed: noticed in {restart['lost_noticed_s']} s, the head alone answered "
                  f"{restart['served_by_head_meanwhile']}; started again with an empty cache: both replicas serving "
                  f"in {restart['restart_to_serving_s']} s, replicas on {restart['replica_nodes']}",
              f"adapter files in each node's own cache folder: {restart['cached_files']}", "",
              f"every check passed: {doc['ok']}"]
    return "\n".join(lines)
