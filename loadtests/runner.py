"""Sends a planned load over HTTP and records every request; admin actions can run beside it.

One asyncio loop and one connection pool: cheap enough that on a small machine the generator
takes little CPU from the server it measures. `lag_s` records how late the generator itself
sent requests, so a report shows whether the generator kept up.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from ..client import Client, ServiceError
from ..deploy.admission import DEADLINE_HEADER  # not deploy.http: the CLI imports this module to build its parser
from ..deploy.process import heap_frozen
from .schedule import Arrival

MODEL_ID_HEADER = "serve_multiplexed_model_id"  # Ray Serve routes multiplexed deployments by it
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Target:
    url: str  # the service's base URL, e.g. http://127.0.0.1:8000
    content_type: str = "image/png"
    send_model_id: bool = False  # also name the task in Serve's multiplexing header
    timeout_s: float = 30.0
    admin_url: str | None = None  # where uploads go (the task board's admin port); None: `url`
    deadline_ms: float | None = None  # sent as X-Request-Timeout-Ms: the service answers 504 rather than late

    def predict_url(self, task: str) -> str:
        return f"{self.url.rstrip('/')}/v1/tasks/{task}/predict"

    def task_url(self, task: str) -> str:
        return f"{(self.admin_url or self.url).rstrip('/')}/v1/tasks/{task}"


@dataclass(frozen=True)
class RequestRecord:
    task: str
    phase: str
    due_s: float
    latency_s: float  # from the due time to the full answer
    status: int  # HTTP status; 0 when no answer came (connection error, timeout)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class Registration:
    """An admin upload during the load: register or replace `task` with `data`."""
    due_s: float
    task: str
    data: bytes


@dataclass(frozen=True)
class RegistrationRecord:
    task: str
    due_s: float
    latency_s: float
    status: int
    servable_everywhere: bool


@dataclass
class LoadResult:
    requests: list[RequestRecord] = field(default_factory=list)
    registrations: list[RegistrationRecord] = field(default_factory=list)
    wall_s: float = 0.0  # from the start to the last answer
    lag_s: list[float] = field(default_factory=list)  # per request: actual send minus due time


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"load tests target loopback only, not {host!r} (pass allow_remote to override)")


def run_load(target: Target, arrivals: list[Arrival], image: bytes, registrations: list[Registration] = (),
             admin_token: str | None = None, allow_remote: bool = False) -> LoadResult:
    if not allow_remote:
        for url in filter(None, (target.url, target.admin_url)):
            require_loopback(url)
    with heap_frozen():  # a full collection in this process would stall the sending and show as latency
        return asyncio.run(_run(target, arrivals, image, list(registrations), admin_token))


async def _run(target, arrivals, image, registrations, admin_token) -> LoadResult:
    result = LoadResult()
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.monotonic()
        senders = [asyncio.create_task(_register_all(target, registrations, admin_token, start, result))]
        for arrival in arrivals:
            delay = start + arrival.due_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            result.lag_s.append(max(0.0, -delay))
            senders.append(asyncio.create_task(_predict(session, target, arrival, image, start, result)))
        await asyncio.gather(*senders)
        result.wall_s = time.monotonic() - start
    return result


async def _predict(session, target: Target, arrival: Arrival, image: bytes, start: float, result: LoadResult) -> None:
    headers = {"Content-Type": target.content_type}
    if target.send_model_id:
        headers[MODEL_ID_HEADER] = arrival.task
    if target.deadline_ms is not None:
        headers[DEADLINE_HEADER] = str(round(target.deadline_ms))
    status, error = 0, None
    try:
        async with session.post(target.predict_url(arrival.task), data=image, headers=headers) as response:
            status = response.status
            body = await response.read()
            if status != 200:
                error = body[:200].decode("utf-8", "replace")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency = time.monotonic() - (start + arrival.due_s)
    result.requests.append(RequestRecord(arrival.task, arrival.phase, arrival.due_s, latency, status, error))


async def _register_all(target: Target, registrations: list[Registration], token: str | None,
                        start: float, result: LoadResult) -> None:
    """Each upload at its due time, open loop like the predictions: a burst overlaps on the server. Uploads go
    through the Python client, each in a thread of its own (the default pool's few threads would queue a burst)."""
    client = Client(target.admin_url or target.url, token=token, timeout_s=target.timeout_s, retries=0)
    uploads, loop = [], asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=max(1, len(registrations))) as threads:
        for item in registrations:
            delay = start + item.due_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            uploads.append(asyncio.create_task(_register(loop.run_in_executor(threads, client.register, item.task,
                                                                              item.data), item, result)))
        await asyncio.gather(*uploads)


async def _register(upload, item: Registration, result: LoadResult) -> None:
    """Records what the service answered (the client retries nothing here)."""
    began, status, everywhere = time.monotonic(), 0, False
    try:
        answer = await upload
        everywhere = bool(answer["servable_everywhere"])
        status = (201 if answer["created"] else 200) if everywhere else 202  # as answered (deploy/http/admin.py)
    except ServiceError as exc:
        status = exc.status
    result.registrations.append(RegistrationRecord(item.task, item.due_s, time.monotonic() - began, status,
                                                   everywhere))
