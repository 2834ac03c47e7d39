"""Time spent in parts of a forward pass, measured on the live batch (CPU clock or CUDA events).

On a GPU the host returns from a kernel launch before the kernel ends, so host timestamps around a
section would measure launches; CUDA events recorded on the stream measure the kernels themselves.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class ComputeClock:
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._cpu: dict[str, float] = defaultdict(float)
        self._events: dict[str, list[tuple[torch.cuda.Event, torch.cuda.Event]]] = defaultdict(list)

    @contextmanager
    def section(self, name: str):
        if self.cuda:
            # On the stream of the device the batch runs on: the thread's current device may be another one
            # (cuda:0 in a fresh worker thread, while the replica serves on cuda:1).
            stream = torch.cuda.current_stream(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            yield
            end.record(stream)
            self._events[name].append((start, end))
        else:
            began = time.perf_counter()
            yield
            self._cpu[name] += time.perf_counter() - began

    def seconds(self) -> dict[str, float]:
        """Totals per section name (waits for the GPU to finish the recorded work)."""
        totals = dict(self._cpu)
        for name, pairs in self._events.items():
            if pairs:
                pairs[-1][1].synchronize()
            totals[name] = totals.get(name, 0.0) + sum(s.elapsed_time(e) for s, e in pairs) / 1000.0
        return totals
