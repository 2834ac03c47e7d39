"""Samples the service's /metrics during a run: resident memory of every serving process over time.

The service exports each process's `process_resident_memory_bytes` under a `replica` label; a
soak compares the first samples with the last to show whether memory drifts.
"""

from __future__ import annotations

import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

MEMORY_METRIC = "process_resident_memory_bytes"


def resident_memory(url: str, timeout_s: float = 10.0) -> dict[str, float]:
    """Bytes per process (its `replica` label) as the service reports them now."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    return {s.labels.get("replica", "service"): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == MEMORY_METRIC}


class MemorySampler:
    """Polls in a thread every `every_s` seconds until stopped; keeps (seconds since start, bytes per process)."""

    def __init__(self, url: str, every_s: float = 5.0) -> None:
        self.url, self.every_s = url, every_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self._start, resident_memory(self.url)))
            except OSError:
                pass  # a missed sample is no reason to stop the run
            self._stop.wait(self.every_s)


def memory_drift(samples: list[tuple[float, dict[str, float]]], skip_s: float) -> dict[str, dict]:
    """Per process: mean of the first and of the last three samples after `skip_s`, in MiB, and the growth."""
    kept = [values for at, values in samples if at >= skip_s]
    drift = {}
    for process in sorted(set().union(*kept)) if kept else []:
        series = [values[process] for values in kept if process in values]
        if len(series) < 2:
            continue
        head, tail = series[:3], series[-3:]
        start, end = sum(head) / len(head) / 2**20, sum(tail) / len(tail) / 2**20
        drift[process] = {"start_mib": round(start, 1), "end_mib": round(end, 1), "growth": round(end / start - 1, 4)}
    return drift
