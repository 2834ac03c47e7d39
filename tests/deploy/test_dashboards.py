"""The shipped Prometheus config and Grafana dashboard against a real Prometheus scraping a live service."""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

import mosaserve.deploy
from mosaserve.deploy.observability.dashboard_check import QueryFailure, check_dashboard, instant_query
from mosaserve.deploy.observability.dashboard_queries import dashboard_expressions, render, template_values

from .conftest import TOKEN, free_port
from .prometheus_server import PrometheusServer, prometheus_binary, scrape_config
from .test_service import png

OBSERVABILITY = Path(mosaserve.deploy.__file__).parent / "observability"
DASHBOARD = json.loads((OBSERVABILITY / "grafana" / "mosaserve.json").read_text())
TASKS = ("dash-a", "dash-b", "dash-c", "__backbone__")
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def prometheus(service, tmp_path_factory):
    """Prometheus scraping the test service every second with the shipped config."""
    binary = prometheus_binary()
    config = scrape_config(OBSERVABILITY / "prometheus.yml", service.url, "1s")
    server = PrometheusServer(binary, config, tmp_path_factory.mktemp("prometheus"), free_port())
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


class Traffic:
    """Mixed-task predictions from several threads, plus failing requests and re-registrations, until stopped."""

    def __init__(self, service, workers: int = 3) -> None:
        self.service, self.stop_event, self.problems = service, threading.Event(), []
        self.adapter = service.adapter(seed=63)[0]
        self.threads = [threading.Thread(target=self._predict, args=(offset,), daemon=True) for offset in range(workers)]
        self.threads.append(threading.Thread(target=self._trouble, daemon=True))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _predict(self, offset: int) -> None:
        image = png()
        for task in itertools.islice(itertools.cycle(TASKS), offset, None):
            if self.stop_event.is_set():
                return
            self._expect(self.service.predict(task, image), 200)

    def _trouble(self) -> None:
        """The error and registration panels need events inside every rate window, not just once."""
        for tick in itertools.count():
            if self.stop_event.wait(0.3):
                return
            self._expect(self.service.predict("dash-missing", png()), 404)
            self._expect(self.service.predict("dash-a", b"not an image"), 400)
            if tick % 6 == 0:
                self._expect(self.service.put("dash-b", self.adapter), 200)  # a new version of a registered task

    def _expect(self, response: requests.Response, status: int) -> None:
        if response.status_code != status:
            self.problems.append(f"{response.request.method} {response.url}: {response.status_code} {response.text[:200]}")


def wait_for_scrape(prom_url: str, timeout_s: float = 30.0) -> None:
    """Until Prometheus holds a sample of the service: counters seen before an event then count its increase."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if instant_query(prom_url, "mosaserve_training_epoch_seconds_count")["data"]["result"]:
            return
        time.sleep(0.5)
    raise TimeoutError("prometheus never scraped the service")


def check_until_clean(prom_url: str, dashboard: dict, timeout_s: float) -> list[QueryFailure]:
    """Rate windows fill a scrape at a time: re-check until every query shows data, or give up."""
    deadline = time.monotonic() + timeout_s
    failures = check_dashboard(prom_url, dashboard)
    while failures and time.monotonic() < deadline:
        time.sleep(2)
        failures = check_dashboard(prom_url, dashboard)
    return failures


def number(prom_url: str, query: str) -> float:
    return float(instant_query(prom_url, query)["data"]["result"][0]["value"][1])


def test_every_dashboard_query_shows_data_from_a_live_service(service, prometheus):
    for seed, task in enumerate(TASKS[:3]):
        assert service.put(task, service.adapter(seed=60 + seed)[0]).status_code == 201
    wait_for_scrape(prometheus.url)
    job = {"task_id": "dash-trained", "dataset": "digits", "epochs": 2, "train_size": 60, "test_size": 30}
    assert requests.post(f"{service.url}/v1/train", json=job, headers=ADMIN, timeout=30).status_code == 202

    with Traffic(service) as traffic:
        failures = check_until_clean(prometheus.url, DASHBOARD, timeout_s=90)
    assert not traffic.problems, traffic.problems[:5]
    assert not failures, "\n".join(f"{f.expr}\n    -> {f.reason}" for f in failures)

    assert number(prometheus.url, "count(count by (replica) (mosaserve_batch_size_count))") == 2
    assert number(prometheus.url, "max(mosaserve_registered_tasks)") >= 3
    latency = render(dashboard_expressions(DASHBOARD)[0], {"__rate_interval": "5m", **template_values(DASHBOARD)})
    tasks = {series["metric"]["task"] for series in instant_query(prometheus.url, latency)["data"]["result"]}
    assert set(TASKS) <= tasks  # one p50 line per served task


def test_broken_queries_are_reported_with_their_reason(prometheus):
    wait_for_scrape(prometheus.url)
    broken = {"panels": [{"type": "row", "panels": [{"targets": [
        {"expr": "sum(up)"},  # fine: Prometheus's own series of the scraped target
        {"expr": "sum(rate(mosaserve_requets_total[$__rate_interval]))"},  # misspelled metric
        {"expr": "sum(rate(mosaserve_requests_total[$__rate_interval])"},  # unbalanced parenthesis
        {"expr": 'sum(mosaserve_requests_total{task=~"$tsk"})'},  # no such template variable
    ]}]}]}
    failures = check_dashboard(prometheus.url, broken)
    assert [f.expr for f in failures] == ["sum(rate(mosaserve_requets_total[30s]))",
                                          "sum(rate(mosaserve_requests_total[30s])",
                                          'sum(mosaserve_requests_total{task=~"$tsk"})']
    assert failures[0].reason.startswith("no data")
    assert failures[1].reason.startswith("bad_data")
    assert failures[2].reason == "unresolved Grafana variables: tsk"


def test_shipped_prometheus_config_passes_promtool():
    promtool = Path(prometheus_binary()).with_name("promtool")
    if not promtool.exists():
        pytest.skip(f"no promtool beside {promtool.parent}/prometheus")
    checked = subprocess.run([str(promtool), "check", "config", str(OBSERVABILITY / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_queries_come_from_every_panel_with_grafana_variables_filled():
    dashboard = {
        "templating": {"list": [{"type": "datasource", "name": "datasource", "query": "prometheus"},
                                {"type": "query", "name": "task", "includeAll": True, "allValue": ".*"},
                                {"type": "custom", "name": "q", "current": {"value": "0.9"}}]},
        "panels": [{"targets": [{"expr": "a"}, {"expr": "a"}, {"refId": "no expr"}]},
                   {"type": "row", "collapsed": True, "panels": [{"targets": [{"expr": " b[$__range] "}]}]},
                   {"targets": [{"expr": 'histogram_quantile($q, c{task=~"${task}"}[[[__interval]]])'}]}],
    }
    exprs = dashboard_expressions(dashboard)
    assert exprs == ["a", "b[$__range]", 'histogram_quantile($q, c{task=~"${task}"}[[[__interval]]])']
    values = {"__range": "5m", "__interval": "15s", **template_values(dashboard)}
    assert [render(e, values) for e in exprs] == ["a", "b[5m]", 'histogram_quantile(0.9, c{task=~".*"}[15s])']


def test_dashboard_is_importable_into_grafana():
    """What Grafana's import needs: unique panel ids, placed panels, every query on the datasource variable."""
    panels = DASHBOARD["panels"]
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 36
    assert len({p["id"] for p in panels}) == len(panels)
    assert all({"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    targets = [t for p in panels for t in p.get("targets", [])]
    assert targets and all(t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for t in targets)
    assert all(len({t["refId"] for t in p["targets"]}) == len(p["targets"]) for p in panels if "targets" in p)
    assert len(dashboard_expressions(DASHBOARD)) >= 30
