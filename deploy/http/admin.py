"""Registering and removing tasks (PUT / DELETE /v1/tasks/{task_id}, POST /v1/tasks for many at once), and the
task board's own admin port.

Both ports take these routes with the same token, limits and answers: the main port's ingress hands
the change to the task board, the admin port is served by the board itself. An upload sent to the
admin port skips the proxy and the ingress, the processes that carry every prediction (their cost
per upload: BENCHMARKS.md), and the board runs at a lower priority; the same split as TorchServe's
management port, and it lets an operator expose inference while keeping this port internal.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Awaitable, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ... import __version__
from ...runtime.object_store import read_object
from ...runtime.task_ids import validate_task_id
from ..config import ServeConfig
from ..messages import ChangeReply
from .bulk_upload import adapter_files
from .errors import BadRequest, EmptyUpload, TooLarge, add_error_handlers, require_admin
from .requests import read_limited

MAX_SOURCE_BYTES = 64 << 10


async def register_task(task_id: str, request: Request, config: ServeConfig, admin_token: str | None,
                        register: Callable[[str, bytes], Awaitable[ChangeReply]]) -> JSONResponse:
    """The body is the task's adapter file (.safetensors), or JSON {"source": "s3://bucket/key"} naming it;
    `register` is the board's."""
    require_admin(request.headers.get("authorization"), admin_token)
    validate_task_id(task_id)
    began = time.perf_counter()
    limit = config.runtime.max_adapter_bytes
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        data = await asyncio.to_thread(read_object, await _source(request), limit)
        if len(data) > limit:
            raise TooLarge(f"the adapter file at the source is over the {limit} bytes taken")
    else:
        data = await read_limited(request.stream(), request.headers.get("content-length"), limit, "adapter file")
    if not data:
        raise EmptyUpload("empty body: upload the adapter file (.safetensors) as the request body")
    reply = await register(task_id, data)
    return answer_change(reply, began, {"task": reply.task, "created": reply.created})


async def register_tasks(request: Request, config: ServeConfig, admin_token: str | None,
                         register_many: Callable[[dict[str, bytes]], Awaitable[ChangeReply]]) -> JSONResponse:
    """The body is a tar of <task_id>.safetensors files; `register_many` is the board's: it validates every
    file before it publishes any, publishes them in one store pass and announces them once."""
    require_admin(request.headers.get("authorization"), admin_token)
    began = time.perf_counter()
    raw = await read_limited(request.stream(), request.headers.get("content-length"),
                             config.limits.max_bulk_upload_bytes, "bulk upload")
    reply = await register_many(adapter_files(raw, config.runtime.max_adapter_bytes))
    return answer_change(reply, began, {"tasks": list(reply.tasks)})


async def remove_task(task_id: str, request: Request, admin_token: str | None,
                      remove: Callable[[str], Awaitable[ChangeReply]]) -> JSONResponse:
    require_admin(request.headers.get("authorization"), admin_token)
    validate_task_id(task_id)
    began = time.perf_counter()
    return answer_change(await remove(task_id), began, {"task_id": task_id, "removed": True})


async def _source(request: Request) -> str:
    raw = await read_limited(request.stream(), request.headers.get("content-length"), MAX_SOURCE_BYTES, "JSON body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from exc
    if not (isinstance(body, dict) and set(body) == {"source"} and isinstance(body["source"], str)):
        raise BadRequest('a JSON registration is {"source": "s3://bucket/key"}: the adapter file\'s URL')
    return body["source"]


def answer_change(reply: ChangeReply, began: float, body: dict) -> JSONResponse:
    """201 for a new task, 200 once every replica serves the change, 202 if some did not within the timeout
    or no replica is alive to serve it (stored, served by none yet)."""
    if reply.error is not None:
        raise reply.error
    everywhere = bool(reply.replicas) and not reply.pending
    body.update(servable_everywhere=everywhere, replicas=len(reply.replicas), pending=list(reply.pending),
                seconds=round(time.perf_counter() - began, 4))
    return JSONResponse(body, status_code=(201 if reply.created else 200) if everywhere else 202)


def admin_api(board, config: ServeConfig) -> FastAPI:
    """The admin port's routes, bound to `board` (a TaskBoard: its register and remove run on this event loop)."""
    api = FastAPI(title="mosaserve admin", version=__version__,
                  description="Register, replace and remove tasks; the inference API is on the main port.")
    add_error_handlers(api)
    token = config.resolved_admin_token()

    @api.put("/v1/tasks/{task_id}")
    async def put_task(task_id: str, request: Request) -> JSONResponse:
        """Register or replace a task: the body is its adapter file (.safetensors), or JSON {"source":
        "s3://bucket/key"} naming it. Admin token required."""
        return await register_task(task_id, request, config, token, board.register)

    @api.delete("/v1/tasks/{task_id}")
    async def delete_task(task_id: str, request: Request) -> JSONResponse:
        return await remove_task(task_id, request, token, board.remove)

    @api.post("/v1/tasks")
    async def post_tasks(request: Request) -> JSONResponse:
        """Register or replace many tasks at once: the body is a tar of <task_id>.safetensors files. Admin."""
        return await register_tasks(request, config, token, board.register_many)

    return api


def listen(host: str, port: int) -> socket.socket:
    """The admin port's socket, bound now, so a port in use fails the board's start with a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted board rebinds at once
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"the task board cannot listen on its admin port {host}:{port}: {exc.strerror}; "
                      "free it or set admin_port (null turns the admin port off)") from exc
    sock.listen(128)
    return sock


def serve_admin_api(api: FastAPI, sock: socket.socket) -> asyncio.Task:
    """Serves `api` on `sock` from this event loop until the process ends."""
    server = uvicorn.Server(uvicorn.Config(api, lifespan="off", log_level="warning", access_log=False))
    return asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
