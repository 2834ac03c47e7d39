"""Keeping Python's garbage collector from stalling a serving process.

A full (generation 2) collection walks every container object the process holds: a replica holds
about 500,000 once torch, timm, Ray and Serve are loaded, and one such collection took 222 ms on the
2-core test machine (BENCHMARKS.md), with the interpreter lock held, so every request in flight
waited. Uploads make them likelier: each loaded adapter leaves long-lived objects, and a full
collection runs once those grow by a quarter. What exists when a process has started is never
garbage, so it is moved out of the collector's sight; it still frees whatever becomes garbage later.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Call once a process has loaded what it keeps: later full collections walk only newer objects."""
    gc.collect()  # what start-up left as garbage goes now, rather than living on frozen
    gc.freeze()
