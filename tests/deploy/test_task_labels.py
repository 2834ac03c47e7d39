"""Per-task request series in /metrics stay bounded however many tasks have traffic."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mosaserve.deploy.observability.metrics import RequestMetrics, exposition
from mosaserve.deploy.observability.task_labels import OTHER_TASK, TaskLabels


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def serve(labels: TaskLabels, metrics: RequestMetrics, task_id: str) -> None:
    """What the ingress does for one answered request."""
    for dropped in labels.rerank():
        metrics.forget(dropped)
    metrics.answered({labels.label(task_id)}, 0.01)


def series(registry: CollectorRegistry) -> tuple[int, int, set[str]]:
    """Series in one scrape, its bytes, and the task labels it shows."""
    text = exposition(registry)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return len(samples), len(text.encode()), {s.labels["task"] for s in samples if "task" in s.labels}


def test_ten_thousand_active_tasks_give_a_scrape_of_the_busiest_hundred_and_one_aggregate():
    clock, registry = Clock(), CollectorRegistry()
    labels, metrics = TaskLabels(100, rerank_s=60, clock=clock), RequestMetrics(registry)
    for task in range(10_000):  # every task served, the first 50 ten times more often
        for _ in range(10 if task < 50 else 1):
            serve(labels, metrics, f"t{task}")
    count, size, tasks = series(registry)
    assert count <= 5_000 and size <= 1_000_000 and len(tasks) == 101 and OTHER_TASK in tasks

    clock.now = 61  # a minute on, the last thousand tasks get a request each
    for task in range(9_000, 10_000):
        serve(labels, metrics, f"t{task}")
    clock.now = 122  # the next re-rank: the 50 busy tasks keep their series, the other places follow the traffic
    for task in range(9_000, 10_000):
        serve(labels, metrics, f"t{task}")
    _, _, tasks = series(registry)
    assert {f"t{i}" for i in range(50)} <= tasks and len(tasks) == 101
    assert len([t for t in tasks if t[1:].isdigit() and int(t[1:]) >= 9_000]) == 50
    assert "t60" not in tasks  # a request long ago: its series are gone


def test_series_stay_put_between_re_ranks_and_follow_the_traffic_at_each():
    clock = Clock()
    labels = TaskLabels(2, rerank_s=60, clock=clock)
    assert [labels.label(t) for t in ("a", "b", "c")] == ["a", "b", OTHER_TASK]  # free places go at once
    for _ in range(5):
        labels.label("b"), labels.label("c")
    assert labels.label("c") == OTHER_TASK and labels.rerank() == set()  # not due yet: nothing moves
    clock.now = 60
    assert labels.rerank() == {"a"} and labels.label("c") == "c" and labels.label("a") == OTHER_TASK
    assert labels.forget("c") and labels.label("a") == "a"  # a removed task frees its place at once

    tied = TaskLabels(1, rerank_s=60, clock=clock)
    assert (tied.label("x"), tied.label("y")) == ("x", OTHER_TASK)
    clock.now = 120
    assert tied.rerank() == set() and tied.label("x") == "x"  # equal traffic: the labelled one keeps its place


def test_a_task_losing_its_label_loses_every_series_of_it():
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry)
    metrics.answered({"gone", "kept"}, 0.02)
    metrics.failed({"gone"}, 404)
    metrics.failed({"gone"}, 503)
    metrics.forget("gone")
    metrics.forget("never-served")  # nothing to remove: no error
    assert series(registry)[2] == {"kept"}
