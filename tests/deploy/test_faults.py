"""Faults under load: a serving replica killed mid-run, the task board killed during uploads, and a storm
of registrations.

Each runs the real service (two replicas) with the open-loop load generator beside it."""

from __future__ import annotations

import threading
import time
from collections import Counter

import requests

from mosaserve.loadtests.inputs import noise_png
from mosaserve.loadtests.mixes import make_mix
from mosaserve.loadtests.runner import Registration, Target, run_load
from mosaserve.loadtests.schedule import Phase, plan_arrivals

from .conftest import TOKEN, crash_actor, wait_healthy


def replica_actors(deployment: str) -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"])


def answers_by_replica(service, task_id: str, count: int) -> dict[str, set]:
    """Which versions each replica answers for a task, over `count` requests."""
    seen: dict[str, set] = {}
    for i in range(count):
        body = service.predict(task_id, noise_png(20, seed=i)).json()
        seen.setdefault(body["predictions"][0]["replica"], set()).add(body["version"])
    return seen


def test_a_killed_replica_fails_no_request_and_its_successor_serves_every_task(service):
    for i in range(3):
        assert service.put(f"k{i}", service.adapter(seed=600 + i)[0]).status_code in (200, 201)
    before = replica_actors("TaskReplica")
    assert len(before) == 2
    arrivals = plan_arrivals([Phase("steady", 60, 8.0)], make_mix("uniform", ["k0", "k1", "k2", "__backbone__"]))
    outcome = {}
    image = noise_png(20, seed=0)
    load = threading.Thread(target=lambda: outcome.update(result=run_load(Target(service.url), arrivals, image)))
    load.start()
    time.sleep(3.0)
    crash_actor(before[0])
    load.join(timeout=120)
    requests_ = outcome["result"].requests
    failed = [r for r in requests_ if not r.ok]
    print(f"killed a replica 3 s into an 8 s run at 60/s: {len(requests_)} requests, {len(failed)} failed")
    assert len(requests_) == 480 and not failed, {r.status for r in failed}
    deadline = time.monotonic() + 120  # Serve's health check (every 10 s) finds the dead replica, then replaces it
    while len(after := [a for a in replica_actors("TaskReplica") if a != before[0]]) < 2:
        assert time.monotonic() < deadline, "Serve never replaced the killed replica"
        time.sleep(0.5)
    wait_healthy(service.url, 2, timeout_s=120)
    successor = next(name for name in after if name not in before).split("#")[-1]
    for task_id in ("k0", "k1", "k2"):
        seen = answers_by_replica(service, task_id, 16)
        assert all(versions == {1} for versions in seen.values()), seen
    deadline = time.monotonic() + 60
    while not any(successor in r for r in answers_by_replica(service, "k0", 8)):
        assert time.monotonic() < deadline, "the successor replica never answered"


def test_a_storm_of_100_registrations_under_load_fails_no_request_and_replicas_converge(service):
    files = [service.adapter(seed=700 + i)[0] for i in range(4)]
    assert service.put("steady", files[0]).status_code in (200, 201)
    uploads = [Registration(0.5 + i * 0.1, f"storm{i % 50}", files[i % 4]) for i in range(100)]
    arrivals = plan_arrivals([Phase("steady", 10, 12.0)], make_mix("uniform", ["steady", "__backbone__", "storm0"]))
    result = run_load(Target(service.url), arrivals, noise_png(20, seed=1), uploads, TOKEN)
    storm0_before_registered = [r for r in result.requests if r.task == "storm0" and r.status == 404]
    failed = [r for r in result.requests if not r.ok and r not in storm0_before_registered]
    assert not failed, {(r.status, r.error) for r in failed}
    in_order = sorted(result.registrations, key=lambda r: r.due_s)  # uploads overlap: they finish in any order
    assert [r.status for r in in_order] == [201] * 50 + [200] * 50
    assert all(r.servable_everywhere for r in result.registrations)
    tasks = {t["task_id"]: t["version"] for t in requests.get(f"{service.url}/v1/tasks", timeout=30).json()["tasks"]}
    assert all(tasks[f"storm{i}"] == 2 for i in range(50))
    for task_id in ("storm0", "storm49"):
        seen = answers_by_replica(service, task_id, 16)
        assert len(seen) == 2 and all(versions == {2} for versions in seen.values()), seen


def test_a_killed_task_board_fails_no_prediction_loses_no_acknowledged_upload_and_comes_back(service):
    files = [service.adapter(seed=800 + i)[0] for i in range(4)]
    assert service.put("board-steady", files[0]).status_code in (200, 201)
    arrivals = plan_arrivals([Phase("steady", 20, 8.0)], make_mix("uniform", ["board-steady", "__backbone__"]))
    # 1 s to 5 s: 20 tasks, each then replaced by another file
    uploads = [Registration(1.0 + i * 0.1, f"board{i % 20}", files[(i + i // 20) % 4]) for i in range(40)]
    killer = threading.Timer(2.5, crash_actor, args=("TaskBoard",))  # uploads are in flight on it
    killer.start()
    result = run_load(Target(service.url), arrivals, noise_png(20, seed=2), uploads, TOKEN)
    killer.join()
    failed = [r for r in result.requests if not r.ok]
    statuses = Counter(r.status for r in result.registrations)
    print(f"killed the task board 2.5 s into an 8 s run at 20/s: {len(result.requests)} requests, {len(failed)} "
          f"failed; 40 uploads from 1 s to 5 s: statuses {dict(statuses)}, slowest "
          f"{max(r.latency_s for r in result.registrations):.1f} s")
    assert len(result.requests) == 160 and not failed, {(r.status, r.error) for r in failed}
    assert set(statuses) <= {200, 201, 503}  # in flight on the dead board: 503, never 500
    live = {t["task_id"]: t["version"] for t in requests.get(f"{service.url}/v1/tasks", timeout=30).json()["tasks"]}
    acknowledged = Counter(r.task for r in result.registrations if r.status in (200, 201))
    assert all(live.get(task, 0) >= count for task, count in acknowledged.items()), (acknowledged, live)
    reply = service.put("after-board", files[1])  # the new board accepts uploads and knows both replicas
    assert reply.status_code == 201 and reply.json()["servable_everywhere"] and reply.json()["replicas"] == 2
    seen = answers_by_replica(service, "after-board", 16)
    assert len(seen) == 2 and all(versions == {1} for versions in seen.values()), seen
