"""Keeping Python's garbage collector from stalling a serving process or the load generator.

A full (generation 2) collection walks every container object the process holds: a replica holds
about 500,000 once torch, timm, Ray and Serve are loaded, and one such collection took 222 ms on the
2-core test machine (BENCHMARKS.md), with the interpreter lock held, so every request in flight
waited. Uploads make them likelier: each loaded adapter leaves long-lived objects, and a full
collection runs once those grow by a quarter. What exists when a process has started is never
garbage, so it is moved out of the collector's sight; it still frees whatever becomes garbage later.

The load generator needs the same for the length of a run: its process holds as much (it built the
adapters with timm and drives Ray), and one full collection there (265 ms, measured) held back
every request due meanwhile, which the report counted as a 0.4 s stall of the service.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


def freeze_startup_heap() -> None:
    """Call once a process has loaded what it keeps: later full collections walk only newer objects."""
    gc.collect()  # what start-up left as garbage goes now, rather than living on frozen
    gc.freeze()


@contextmanager
def heap_frozen() -> Iterator[None]:
    """For a measurement: what exists when it starts is out of the collector's sight until it ends (any
    garbage among it is freed by the first collection after)."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:  # a process that froze its own heap keeps it frozen
            gc.unfreeze()
