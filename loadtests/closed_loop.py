"""A closed-loop load: `concurrency` clients, each sending its next request once its last is answered."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import aiohttp

from .report import percentile

Send = Callable[[aiohttp.ClientSession, int], Awaitable[bool]]  # sends request i; whether it succeeded


async def closed_loop(send: Send, concurrency: int, duration_s: float | None = None,
                      requests: int | None = None) -> dict:
    """Runs until `duration_s` passed or `requests` were sent; per second answered, p50 / p99 ms, failures."""
    latencies, failed, sent = [], 0, 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        began = time.monotonic()

        def next_request() -> int | None:
            nonlocal sent
            if (requests is not None and sent >= requests) or \
                    (duration_s is not None and time.monotonic() - began >= duration_s):
                return None
            sent += 1
            return sent - 1

        async def client() -> None:
            nonlocal failed
            while (index := next_request()) is not None:
                start = time.monotonic()
                try:
                    answered = await send(session, index)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    answered = False
                if answered:
                    latencies.append(time.monotonic() - start)
                else:
                    failed += 1
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.monotonic() - began
    return {"per_s": round(len(latencies) / wall, 2), "p50_ms": _ms(percentile(latencies, 50)),
            "p99_ms": _ms(percentile(latencies, 99)), "answered": len(latencies), "failed": failed}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
