"""Metric definitions (Prometheus), one registry per process, and the merge of many processes' metrics.

Each serving process records into its own registry; the served application gathers every
process's exposition text and `merge_expositions` joins them under a `replica` label, so one
scrape of the service returns the metrics of every replica. Processes that do not serve (ingress,
sidecar) push their text to the task board every few seconds (`report_metrics_forever`).
"""

from __future__ import annotations

import asyncio

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics,
                               generate_latest)

# Creation timestamps would add one series per series (half the text, and its render time); no panel
# reads them. prometheus_client's switch is per process, and only mosaserve's metrics live in its processes.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMPUTE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SHED_REASONS = ("queue_full", "deadline_passed", "client_gone")


def _counter_by(name: str, doc: str, label: str, values: tuple[str, ...], registry: CollectorRegistry) -> Counter:
    """A counter whose every label value is exported from the start: a rate over it reads 0, not "no data"."""
    counter = Counter(name, doc, [label], registry=registry)
    for value in values:
        counter.labels(value)
    return counter


def _watch_process(registry: CollectorRegistry) -> None:
    """The process's memory, CPU time and open files (`process_*`): a soak run watches them for drift."""
    ProcessCollector(registry=registry)


class RequestMetrics:
    """Per task, recorded where requests enter (the HTTP ingress)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        _watch_process(registry)
        self.requests = Counter("mosaserve_requests", "Inference requests per task (one per HTTP call, whatever its image count).", ["task"],
                                registry=registry)
        self.errors = Counter("mosaserve_request_errors", "Failed inference requests per task and HTTP status.",
                              ["task", "code"], registry=registry)
        self.latency = Histogram("mosaserve_request_latency_seconds",
                                 "End-to-end server-side latency of an inference request, per task.", ["task"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.shed = _counter_by("mosaserve_requests_shed", "Inference requests answered without a prediction to "
                                "keep the others within their deadlines: refused at once while the queues were full "
                                "(503), past their deadline (504), or given up by their client.",
                                "reason", SHED_REASONS, registry)

    def answered(self, labels: set[str], elapsed_s: float) -> None:
        for label in labels:
            self.requests.labels(label).inc()
            self.latency.labels(label).observe(elapsed_s)

    def failed(self, labels: set[str], status: int) -> None:
        for label in labels:
            self.requests.labels(label).inc()
            self.errors.labels(label, str(status)).inc()

    def forget(self, task: str) -> None:
        """Removes the task's series (it lost its label, or was removed)."""
        codes = {s.labels["code"] for family in self.errors.collect() for s in family.samples
                 if s.labels.get("task") == task}
        for metric, labels in [(self.requests, (task,)), (self.latency, (task,))] + [
                (self.errors, (task, code)) for code in codes]:
            try:
                metric.remove(*labels)
            except KeyError:  # no request of it ended that way
                pass


class RegistrationMetrics:
    """Recorded where the task set changes (the task board), whichever way an upload came: the main
    port, the admin port or the training sidecar."""

    def __init__(self, registry: CollectorRegistry) -> None:
        _watch_process(registry)
        self.latency = Histogram("mosaserve_registration_latency_seconds",
                                 "From the task board receiving an adapter file to its version being servable on "
                                 "every replica.", buckets=LATENCY_BUCKETS, registry=registry)


class BatchMetrics:
    """Per batch and per replica, recorded where batches run."""

    def __init__(self, registry: CollectorRegistry) -> None:
        _watch_process(registry)
        self.batch_size = Histogram("mosaserve_batch_size", "Images per executed batch.",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.distinct_tasks = Histogram("mosaserve_batch_distinct_tasks",
                                        "Distinct tasks (adapters) per executed batch, the bare backbone counted as one.",
                                        buckets=BATCH_BUCKETS, registry=registry)
        self.queue_wait = Histogram("mosaserve_queue_wait_seconds",
                                    "From the ingress handing a request on to its batch starting to run.",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.backbone_seconds = Histogram("mosaserve_batch_backbone_seconds",
                                          "Compute time of the shared frozen backbone per batch (measured).",
                                          buckets=COMPUTE_BUCKETS, registry=registry)
        self.adapter_seconds = Histogram("mosaserve_batch_adapter_seconds",
                                         "Compute time of task-specific work per batch: adapter branches and heads (measured).",
                                         buckets=COMPUTE_BUCKETS, registry=registry)
        self.resident_adapters = Gauge("mosaserve_resident_adapters", "Adapters held on the serving device.",
                                       registry=registry)
        self.registered_tasks = Gauge("mosaserve_registered_tasks", "Tasks servable on this replica.",
                                      registry=registry)
        self.host_adapters = Gauge("mosaserve_host_adapters", "Adapters held in host memory.", registry=registry)
        self.host_reloads = Gauge("mosaserve_adapter_host_reloads",
                                  "Adapters read back from the store after leaving host memory, since start.",
                                  registry=registry)
        self.evictions = Gauge("mosaserve_adapter_evictions", "Adapters evicted from the device since start (LRU).",
                               registry=registry)
        self.swaps = Counter("mosaserve_adapter_swaps", "Task versions made servable, or removed, on this replica.",
                             ["action"], registry=registry)
        self.swap_seconds = Histogram("mosaserve_swap_latency_seconds",
                                      "Time to load, validate and swap in one task version on a replica.",
                                      buckets=LATENCY_BUCKETS, registry=registry)
        self.store_errors = Counter("mosaserve_store_load_errors", "Stored adapters a replica could not load.",
                                    registry=registry)
        self.held_rows = Gauge("mosaserve_replica_queued_rows", "Rows a replica has admitted and not yet answered.",
                               registry=registry)
        self.refused = Counter("mosaserve_replica_refused_rows", "Rows a replica refused at once: those ahead of "
                               "them would have outlasted their deadline.", registry=registry)
        self.dropped = _counter_by("mosaserve_replica_dropped_rows", "Admitted rows dropped before their batch ran, "
                                   "never computed: their deadline passed, or their client went away.",
                                   "reason", SHED_REASONS[1:], registry)


def merge_expositions(texts: dict[str, str]) -> bytes:
    """Joins the exposition texts of several processes, labelling each sample with its process.

    Line by line, without parsing: in each text (from `exposition`) a family's HELP and TYPE lines come
    before its samples, so a family's header is taken from the first text that has it and every sample
    line gets a `replica` label put first."""
    header_of: dict[str, str] = {}  # family -> the source its header lines were taken from
    lines: dict[str, list[str]] = {}  # family -> header lines, then every source's samples, in order
    for source, text in sorted(texts.items()):
        label, family = f'replica="{_escaped(source)}"', None
        for line in text.splitlines():
            if line.startswith(("# HELP ", "# TYPE ")):
                family = line.split(" ", 3)[2]
                if header_of.setdefault(family, source) == source:
                    lines.setdefault(family, []).append(line)
            elif line and not line.startswith("#") and family is not None:
                lines[family].append(_with_label(line, label))
    return "".join(f"{line}\n" for family in lines.values() for line in family).encode()


def _with_label(sample: str, label: str) -> str:
    """`name{a="1"} 2` -> `name{label,a="1"} 2` and `name 2` -> `name{label} 2`: a metric name holds no brace
    or space, so whichever comes first ends it."""
    brace, space = sample.find("{"), sample.find(" ")
    if 0 <= brace < space:
        rest = sample[brace + 1:]
        return f"{sample[:brace]}{{{label}{'' if rest.startswith('}') else ','}{rest}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(registry: CollectorRegistry) -> str:
    """The registry's Prometheus text, without `_created` series (switched off at the top of this module)."""
    return generate_latest(registry).decode()


class TrainingMetrics:
    """The training sidecar's jobs, exported beside the serving metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        _watch_process(registry)
        self.jobs = Counter("mosaserve_training_jobs", "Training jobs by final state (and submitted).", ["state"],
                            registry=registry)
        self.running = Gauge("mosaserve_training_jobs_running", "Training jobs running now.", registry=registry)
        self.epoch_seconds = Histogram("mosaserve_training_epoch_seconds", "Wall time of one training epoch.",
                                       buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600), registry=registry)
        self.loss = Gauge("mosaserve_training_loss", "Mean training loss of the last epoch, per task.", ["task"],
                          registry=registry)
        self.accuracy = Gauge("mosaserve_training_test_accuracy", "Held-out accuracy of the trained file, per task.",
                              ["task"], registry=registry)


# As often as deploy/observability/prometheus.yml scrapes: the ingress's text takes longer to render with every task it
# has seen (BENCHMARKS.md), and a scrape reads the ingress it lands on fresh anyway.
PUSH_EVERY_S = 5.0


async def report_metrics_forever(board, process_id: str, registry: CollectorRegistry,
                                 every_s: float = PUSH_EVERY_S) -> None:
    while True:
        try:
            text = await asyncio.to_thread(exposition, registry)  # not on the event loop that serves requests
            await board.report_metrics.remote(process_id, text)
        except Exception:  # noqa: BLE001 - the board restarting must not end the loop
            pass
        await asyncio.sleep(every_s)
