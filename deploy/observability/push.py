"""Processes that are not serving replicas (ingress, trainer) keep their metrics on the task board."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from .metrics import exposition

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
