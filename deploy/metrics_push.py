"""Processes that are not serving replicas (ingress, trainer) keep their metrics on the task board."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from ..runtime.metrics import exposition


async def report_metrics_forever(board, process_id: str, registry: CollectorRegistry, every_s: float = 1.0) -> None:
    while True:
        try:
            await board.report_metrics.remote(process_id, exposition(registry))
        except Exception:  # noqa: BLE001 - the board restarting must not end the loop
            pass
        await asyncio.sleep(every_s)
