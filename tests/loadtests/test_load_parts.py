"""The load generator's parts: mixes, open-loop schedules, summaries, plots, and the open loop itself
against a real (deliberately slow) HTTP server."""

from __future__ import annotations

import gc
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from PIL import Image

from mosaserve.loadtests.mixes import BACKBONE_TASK, make_mix
from mosaserve.loadtests.plot import plot_latency
from mosaserve.loadtests.report import meets_slo, percentile, report, summarise
from mosaserve.loadtests.runner import LoadResult, RequestRecord, Target, run_load
from mosaserve.loadtests.scenarios import LoadSpec, phases_for, registration_plan
from mosaserve.loadtests.schedule import MAX_REQUESTS, Phase, plan_arrivals


def test_zipf_weights_fall_as_one_over_rank_to_the_s_and_draws_follow_them():
    import random

    mix = make_mix("zipf", [f"t{i}" for i in range(10)], zipf_s=1.0)
    assert sum(mix.weights) == pytest.approx(1.0)
    assert mix.weights[0] / mix.weights[1] == pytest.approx(2.0) and mix.weights[0] / mix.weights[9] == pytest.approx(10.0)
    counts = Counter(mix.draw(random.Random(1), 20_000))
    assert counts["t0"] / 20_000 == pytest.approx(mix.weights[0], abs=0.01)
    assert counts["t0"] > counts["t1"] > counts["t9"] > 0
    assert mix.draw(random.Random(7), 50) == mix.draw(random.Random(7), 50)  # reproducible


def test_other_mixes_and_bad_mixes():
    assert make_mix("uniform", ["a", "b"]).weights == (1.0, 1.0)
    assert make_mix("single", ["a", "b"]).tasks == ("a",)
    assert make_mix("backbone", []).tasks == (BACKBONE_TASK,)
    with pytest.raises(ValueError, match="unknown task mix"):
        make_mix("pareto", ["a"])
    with pytest.raises(ValueError, match="at least one task"):
        make_mix("uniform", [])
    with pytest.raises(ValueError, match="positive"):
        make_mix("zipf", ["a"], zipf_s=0)


def test_arrivals_are_evenly_spaced_per_phase_and_phases_follow_each_other():
    mix = make_mix("uniform", ["a", "b"])
    arrivals = plan_arrivals([Phase("warmup", 10, 1, measured=False), Phase("burst", 40, 0.5)], mix)
    assert [a.phase for a in arrivals] == ["warmup"] * 10 + ["burst"] * 20
    assert arrivals[1].due_s - arrivals[0].due_s == pytest.approx(0.1)
    assert arrivals[10].due_s == pytest.approx(1.0) and arrivals[11].due_s - arrivals[10].due_s == pytest.approx(0.025)
    with pytest.raises(ValueError, match="bounded"):
        plan_arrivals([Phase("huge", MAX_REQUESTS, 2)], mix)
    with pytest.raises(ValueError, match="positive"):
        Phase("none", 0, 1)


def record(latency_ms: float, status: int = 200, task: str = "a", phase: str = "steady") -> RequestRecord:
    return RequestRecord(task, phase, 0.0, latency_ms / 1000, status, None if status == 200 else "boom")


def test_summary_counts_percentiles_goodput_and_errors():
    records = [record(ms) for ms in range(1, 101)] + [record(5, status=503), record(5, status=0)]
    summary = summarise(records, offered_s=10.0, slo_s=0.050, served_s=20.0)
    assert summary["requests"] == 102 and summary["ok"] == 100 and summary["errors"] == 2
    assert summary["errors_by_status"] == {"0": 1, "503": 1}
    assert (summary["p50_ms"], summary["p95_ms"], summary["p99_ms"]) == (50.0, 95.0, 99.0)
    assert summary["offered_rps"] == pytest.approx(10.2)  # everything sent, per offered second
    assert summary["throughput_rps"] == pytest.approx(5.0)  # answered, per second until drained
    assert summary["goodput_rps"] == pytest.approx(2.5)  # within the 50 ms SLO
    assert not meets_slo(summary, 0.5)  # errors miss it whatever the latency
    assert meets_slo(summarise([record(40)], 1.0, 0.05), 0.05) and not meets_slo(summarise([record(60)], 1.0, 0.05), 0.05)
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0


def test_report_leaves_warmup_out_and_breaks_down_by_task_and_phase():
    phases = phases_for("burst", LoadSpec(rate=10, duration_s=2, warmup_s=1, burst_s=1))
    assert [(p.name, p.rate) for p in phases] == [("warmup", 10), ("before", 10), ("burst", 30), ("after", 10)]
    records = [record(500, phase="warmup"), record(10, task="a", phase="before"), record(20, task="b", phase="burst"),
               record(30, task="b", phase="after", status=500)]
    doc = report(LoadResult(records, wall_s=4.0), phases, slo_s=0.1)
    assert doc["overall"]["requests"] == 3 and doc["overall"]["errors"] == 1
    assert set(doc["tasks"]) == {"a", "b"} and doc["tasks"]["b"]["errors"] == 1
    assert doc["phases"]["burst"]["p99_ms"] == 20.0 and "warmup" not in doc["phases"]


def test_registration_plan_spreads_uploads_over_their_phase_and_replaces_half():
    phases = phases_for("registrations", LoadSpec(rate=5, duration_s=10, warmup_s=2))
    plan = registration_plan(phases, [b"one", b"two"], count=6)
    assert [r.due_s for r in plan] == pytest.approx([7.0, 7 + 5 / 6, 7 + 10 / 6, 9.5, 7 + 20 / 6, 7 + 25 / 6])
    assert [r.task for r in plan] == ["loadtest-0", "loadtest-1", "loadtest-2"] * 2
    assert [r.data for r in plan[:3]] == [b"one", b"two", b"one"]
    with pytest.raises(ValueError, match="adapter files"):
        registration_plan(phases, [], count=3)


def test_registration_rounds_repeat_steady_and_burst_and_the_report_pools_each_phase_name():
    spec = LoadSpec(rate=2, duration_s=4, warmup_s=1, rounds=3)
    phases = phases_for("registrations", spec)
    assert [p.name for p in phases] == ["warmup"] + ["steady", "registrations"] * 3
    plan = registration_plan(phases, [b"file"], count=2)
    assert [r.due_s for r in plan] == pytest.approx([3, 4, 7, 8, 11, 12])  # each burst phase starts 2 s after its steady
    assert [r.task for r in plan] == ["loadtest-0"] * 6
    records = [record(10 * (i + 1), phase=name) for i, name in
               enumerate(["warmup", "steady", "registrations", "steady", "registrations", "steady", "registrations"])]
    doc = report(LoadResult(records, wall_s=13.0), phases, slo_s=1.0)
    steady, burst = doc["phases"]["steady"], doc["phases"]["registrations"]
    assert (steady["requests"], burst["requests"]) == (3, 3)
    assert steady["offered_rps"] == pytest.approx(3 / 6) and burst["p99_ms"] == pytest.approx(70, abs=0.5)


def test_process_roles_follow_rays_process_titles():
    from mosaserve.loadtests.process_cost import process_role

    assert process_role("ray::ServeReplica:mosaserve:TaskReplica.handle_request_with_rejection") == "TaskReplica"
    assert process_role("ray::ServeReplica:side-by-side:TaskBoard") == "TaskBoard"
    assert process_role("ray::ProxyActor.receive_asgi_messages") == "ProxyActor"
    assert process_role("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x") == "raylet"
    assert process_role("/usr/bin/python -m pytest") is None and process_role("") is None


def test_latency_plot_is_a_png_of_the_planned_size(tmp_path):
    records = [record(10 + i) for i in range(50)] + [record(5, status=500)]
    path = plot_latency(records, [Phase("steady", 10, 5)], 0.1, tmp_path / "plot.png", "test")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 480)
        assert (214, 39, 40) in {image.getpixel((x, y)) for x in range(60, 1000) for y in range(40, 52)}  # the failure


class SlowSerialHandler(BaseHTTPRequestHandler):
    """Answers one request at a time, each after 0.1 s: a server with a capacity of 10 requests/s. It runs in
    the test's process, so it also notes what the garbage collector of the load generator's process sees."""

    frozen_counts: list[int] = []

    def do_POST(self):  # noqa: N802 - the http.server API
        import time

        self.frozen_counts.append(gc.get_freeze_count())
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(0.1)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_open_loop_latency_counts_the_queue_a_slow_server_builds():
    server = HTTPServer(("127.0.0.1", 0), SlowSerialHandler)  # serial: one request at a time
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        arrivals = plan_arrivals([Phase("steady", 20, 1.0)], make_mix("single", ["a"]))
        result = run_load(Target(f"http://127.0.0.1:{server.server_address[1]}", timeout_s=20), arrivals, b"x")
    finally:
        server.shutdown()
        server.server_close()
    latencies = sorted(r.latency_s for r in result.requests)
    assert len(latencies) == 20 and all(r.ok for r in result.requests)
    # 20 arrivals in 1 s at 10/s of capacity: the last, due at 0.95 s, is answered after the 19
    # before it, at about 2.0 s, though each took 0.1 s to serve. A closed loop would report 0.1 s.
    assert latencies[0] < 0.5 and latencies[-1] > 0.9
    assert result.wall_s > 1.9 and max(result.lag_s) < 0.2  # the generator itself kept to the schedule
    # During the run the generator's heap (torch, Ray, the test's own objects) was out of the collector's
    # sight, so no full collection could stall the sending; after it the heap is as it was.
    assert min(SlowSerialHandler.frozen_counts) > 10_000 and gc.get_freeze_count() == 0


def test_load_targets_loopback_unless_told_otherwise():
    with pytest.raises(ValueError, match="loopback"):
        run_load(Target("http://192.0.2.1:8000"), [], b"x")


def test_soak_parts_windows_periodic_uploads_and_memory_drift():
    from mosaserve.loadtests.metrics_sampler import memory_drift
    from mosaserve.loadtests.scenarios import latency_windows, periodic_registrations

    phases = phases_for("soak", LoadSpec(rate=2, duration_s=30, warmup_s=5))
    assert [(p.name, p.measured) for p in phases] == [("warmup", False), ("soak", True)]
    uploads = periodic_registrations(phases, [b"f"], every_s=10, distinct=2)
    assert [(u.due_s, u.task) for u in uploads] == [(10.0, "soak-0"), (20.0, "soak-1"), (30.0, "soak-0")]
    records = [RequestRecord("a", "soak", 5 + i, (10 + i) / 1000, 200) for i in range(30)]
    windows = latency_windows(records, start_s=5, duration_s=30, count=3)
    assert [w["requests"] for w in windows] == [10, 10, 10]
    assert [w["p99_ms"] for w in windows] == [19.0, 29.0, 39.0] and windows[1]["from_s"] == 10.0
    samples = [(t, {"replica-a": 100 * 2**20 + t * 2**20, "ingress": 50 * 2**20}) for t in range(0, 60, 5)]
    drift = memory_drift(samples, skip_s=5)
    assert drift["ingress"] == {"start_mib": 50.0, "end_mib": 50.0, "growth": 0.0}
    assert drift["replica-a"]["start_mib"] == 110.0 and drift["replica-a"]["end_mib"] == 150.0


def test_the_cli_refuses_bad_load_options_with_a_message(capsys):
    from mosaserve.cli import main

    assert main(["loadtest", "run", "--scenario", "registrations", "--mix", "backbone", "--rate", "1",
                 "--duration", "1", "--out", "/tmp/mosaserve-unused"]) == 2
    assert "needs adapter files" in capsys.readouterr().err
    assert main(["loadtest", "run", "--url", "http://192.0.2.9:8000", "--mix", "backbone"]) == 2
    assert "loopback only" in capsys.readouterr().err


def test_shedding_counts_refusals_timeouts_and_answers_sent_after_their_deadline():
    from mosaserve.loadtests.overload import shedding

    records = [RequestRecord("a", "load", 0.0, 0.05, 200), RequestRecord("a", "load", 0.0, 0.7, 200),
               RequestRecord("a", "load", 0.0, 0.01, 503), RequestRecord("a", "load", 0.0, 0.5, 504),
               RequestRecord("a", "load", 0.0, 30.0, 0), RequestRecord("a", "load", 0.0, 0.02, 404)]
    assert shedding(records, slo_s=0.5) == {"shed": 2, "shed_p99_ms": 500.0, "client_timeouts": 1,
                                            "answers_after_deadline": 1}
