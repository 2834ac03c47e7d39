"""Overload on a live service: bounded queues refuse at once, rows past their deadline or whose client left are
never computed, and every shed request is counted by reason.

The service's batches wait a whole second for more rows, so what is queued, refused or dropped is decided by
the limits under test, not by how fast this machine happens to be.
"""

from __future__ import annotations

import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mosaserve.deploy.config import ServeConfig

from .conftest import APP, deploy, saved_tiny_backbone, wait_healthy
from .test_service import png

BATCH_WAIT_S = 1.0


@pytest.fixture(scope="module")
def slow_batches(ray_cluster, tmp_path_factory) -> str:
    """One replica that takes two rows at a time, one more waiting at the ingress, batches formed over 1 s."""
    from ray import serve

    root = tmp_path_factory.mktemp("overload")
    config = ServeConfig.of(
        backbone=saved_tiny_backbone(root)[0],
        store_dir=str(root / "store"), replicas=1, replica_num_cpus=0.5, torch_threads=1, max_batch_size=16,
        batch_wait_timeout_s=BATCH_WAIT_S, max_ongoing_requests=2, max_queued_requests=1, request_timeout_s=5.0,
        heartbeat_s=0.5)
    deploy(config)
    wait_healthy(ray_cluster, 1)
    yield ray_cluster
    serve.delete(APP)


def predict(url: str, timeout_ms: int | None = None) -> tuple[int, float, requests.Response]:
    headers = {"Content-Type": "image/png"}
    if timeout_ms is not None:
        headers["X-Request-Timeout-Ms"] = str(timeout_ms)
    began = time.monotonic()
    response = requests.post(f"{url}/v1/tasks/__backbone__/predict", data=png(), headers=headers, timeout=30)
    return response.status_code, time.monotonic() - began, response


def one_after_another(url: str, count: int, gap_s: float = 0.1) -> list[tuple[int, float, requests.Response]]:
    """`count` requests `gap_s` apart, all within one batch's wait. Not all at once: Serve counts a request
    being routed as queued, so simultaneous ones can be refused before a slot is seen taken."""
    results: list = [None] * count

    def send(i: int) -> None:
        results[i] = predict(url)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
        time.sleep(gap_s)
    for thread in threads:
        thread.join(timeout=60)
    return results


def counters(url: str) -> dict[tuple[str, str], float]:
    """(sample name, its reason label or "") -> value, summed over the service's processes."""
    totals: dict[tuple[str, str], float] = {}
    text = requests.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, s.labels.get("reason", ""))
            totals[key] = totals.get(key, 0.0) + s.value
    return totals


SHED = "mosaserve_requests_shed_total"
DROPPED = "mosaserve_replica_dropped_rows_total"
COMPUTED = ("mosaserve_batch_size_sum", "")  # rows the replica's batches ran


def settled_counters(url: str) -> dict[tuple[str, str], float]:
    """The counters once what came before has been reported: a replica sends its metrics with its next beat."""
    time.sleep(1.5)
    return counters(url)


def increases(url: str, before: dict, expected: dict[tuple[str, str], float], timeout_s: float = 15.0) -> dict:
    """The increases of the `expected` counters once they reach their values (replicas report every beat), or
    as they stand after `timeout_s`; then once more a beat later, so a late count would still show."""
    deadline = time.monotonic() + timeout_s
    while True:
        increase = {key: counters(url).get(key, 0.0) - before.get(key, 0.0) for key in expected}
        if increase == expected or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    after = settled_counters(url)
    return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in expected}


def test_requests_past_the_queue_bound_are_refused_at_once_and_counted(slow_batches):
    before = settled_counters(slow_batches)
    results = one_after_another(slow_batches, 6)
    statuses = [status for status, _, _ in results]
    assert statuses == [200, 200, 200, 503, 503, 503], [r.text[:200] for _, _, r in results]  # 2 taken, 1 waits
    refused = [(seconds, response) for status, seconds, response in results if status == 503]
    assert all(seconds < BATCH_WAIT_S / 2 for seconds, _ in refused), refused  # not held until a batch ran
    assert all(r.headers["Retry-After"] == "1" and "retry later" in r.json()["error"] for _, r in refused)
    expected = {(SHED, "queue_full"): 3.0, COMPUTED: 3.0}
    assert increases(slow_batches, before, expected) == expected


def test_a_row_past_its_deadline_is_answered_504_and_never_computed(slow_batches):
    before = settled_counters(slow_batches)
    status, seconds, response = predict(slow_batches, timeout_ms=300)
    assert status == 504 and "deadline" in response.json()["error"]
    assert 0.3 <= seconds < BATCH_WAIT_S  # answered at its deadline, not when its batch would have run
    expected = {(SHED, "deadline_passed"): 1.0, (DROPPED, "deadline_passed"): 1.0, COMPUTED: 0.0}
    assert increases(slow_batches, before, expected) == expected


def test_a_deadline_long_enough_is_met(slow_batches):
    status, seconds, _ = predict(slow_batches, timeout_ms=int(BATCH_WAIT_S * 1000) + 2000)
    assert status == 200 and seconds < BATCH_WAIT_S + 2


def test_a_row_whose_client_went_away_is_never_computed(slow_batches):
    before = settled_counters(slow_batches)
    host, port = urlsplit(slow_batches).hostname, urlsplit(slow_batches).port
    body = png()
    with socket.create_connection((host, port), timeout=10) as client:
        client.sendall(b"POST /v1/tasks/__backbone__/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.3)  # the row now waits for its batch
    expected = {(SHED, "client_gone"): 1.0, (DROPPED, "client_gone"): 1.0, COMPUTED: 0.0}
    assert increases(slow_batches, before, expected) == expected


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_timeout_header_is_refused(slow_batches, value):
    response = requests.post(f"{slow_batches}/v1/tasks/__backbone__/predict", data=png(),
                             headers={"Content-Type": "image/png", "X-Request-Timeout-Ms": value}, timeout=30)
    assert response.status_code == 400 and "X-Request-Timeout-Ms" in response.json()["error"]


def test_the_timeout_header_is_documented(slow_batches):
    spec = requests.get(f"{slow_batches}/openapi.json", timeout=30).json()
    parameters = spec["paths"]["/v1/tasks/{task_id}/predict"]["post"]["parameters"]
    header = next(p for p in parameters if p["name"] == "X-Request-Timeout-Ms")
    assert header["in"] == "header" and "deadline" in header["description"]
