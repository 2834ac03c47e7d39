"""Inference calls to the replicas, sent again when the replica serving them died.

A prediction changes no state, so a row whose replica died mid-batch can be sent again; Serve's
router stops picking a dead replica once it sees it is gone, and the controller starts a new one.
Only when every attempt meets a dead replica does the client get a 503 (retry later), never a 500.

Calls go by reference (Ray actor calls), not over Serve's gRPC data plane (`_by_reference=False`, or
RAY_SERVE_USE_GRPC_BY_DEFAULT): with Serve's same-loop flags, gRPC cut 6-11 CPU ms per prediction, but in
Ray 2.60 the router kept a finished gRPC call counted against its replica for seconds, so the requests
after it all went to the other replica (BENCHMARKS.md, session 12).
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
