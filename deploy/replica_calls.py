"""Inference calls to the replicas, sent again when the replica serving them died.

A prediction changes no state, so a row whose replica died mid-batch can be sent again; Serve's
router stops picking a dead replica once it sees it is gone, and the controller starts a new one.
Only when every attempt meets a dead replica does the client get a 503 (retry later), never a 500.
"""

from __future__ import annotations

import asyncio

from ray.exceptions import ActorUnavailableError, RayActorError

from .errors import ApiError
from .replica import PredictItem, RowReply

REPLICA_GONE = (RayActorError, ActorUnavailableError)
ATTEMPTS = 4


async def predict_row(replicas, item: PredictItem) -> RowReply:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return await replicas.predict.remote(item)
        except REPLICA_GONE as exc:
            if attempt == ATTEMPTS:
                raise ApiError(503, f"no serving replica answered ({type(exc).__name__}); retry later",
                               retry_after_s=2) from exc
            await asyncio.sleep(0.1 * attempt)  # let the router notice the dead replica
