"""The admin port: the task board serves PUT and DELETE /v1/tasks/{task_id} on a port of its own.

An upload sent to the main port passes Serve's HTTP proxy and the ingress, the processes that carry
every prediction, at their priority: about 19-21 CPU ms per upload (proxy 8.6-9.5, ingress 10.6-11.9)
on top of the board's own work (BENCHMARKS.md). Sent here, it reaches the board directly, whose
threads run at `board_nice`, so a burst of registrations costs serving only the replicas' reload.
The same split as TorchServe's management port, and it lets an operator expose inference while
keeping this port internal.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from .config import ServeConfig
from .http_errors import add_error_handlers
from .task_change_routes import register_task, remove_task


def admin_api(board, config: ServeConfig) -> FastAPI:
    """The routes, bound to `board` (a TaskBoard: its register and remove run on this event loop)."""
    api = FastAPI(title="mosaserve admin", version=__version__,
                  description="Register, replace and remove tasks; the inference API is on the main port.")
    add_error_handlers(api)
    token = config.resolved_admin_token()

    @api.put("/v1/tasks/{task_id}")
    async def put_task(task_id: str, request: Request) -> JSONResponse:
        """Register or replace a task: the body is its adapter file (.safetensors). Admin token required."""
        return await register_task(task_id, request, config, token, board.register)

    @api.delete("/v1/tasks/{task_id}")
    async def delete_task(task_id: str, request: Request) -> JSONResponse:
        return await remove_task(task_id, request, token, board.remove)

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
