"""Registering and removing a task over HTTP (PUT / DELETE /v1/tasks/{task_id}), for both ports that take
them: the main port's ingress hands the change to the task board, the board's admin port makes it itself.
Same token, limits and answers either way."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse

from ..runtime.errors import InvalidTaskIdError
from ..runtime.task_ids import validate_task_id
from .auth import require_admin
from .config import ServeConfig
from .errors import ApiError
from .request_body import read_limited

if TYPE_CHECKING:  # the board serves these routes itself on its admin port, so it imports this module
    from .board import ChangeReply


def valid_task_id(task_id: str) -> None:
    try:
        validate_task_id(task_id)
    except InvalidTaskIdError as exc:
        raise ApiError(400, str(exc)) from exc


async def register_task(task_id: str, request: Request, config: ServeConfig, admin_token: str | None,
                        register: Callable[[str, bytes], Awaitable[ChangeReply]]) -> JSONResponse:
    """The body is the task's adapter file (.safetensors); `register` is the board's."""
    require_admin(request.headers.get("authorization"), admin_token)
    valid_task_id(task_id)
    began = time.perf_counter()
    data = await read_limited(request.stream(), request.headers.get("content-length"), config.max_adapter_bytes,
                              "adapter file")
    if not data:
        raise ApiError(422, "empty body: upload the adapter file (.safetensors) as the request body")
    reply = await register(task_id, data)
    return _answer(reply, began, {"task": reply.task})


async def remove_task(task_id: str, request: Request, admin_token: str | None,
                      remove: Callable[[str], Awaitable[ChangeReply]]) -> JSONResponse:
    require_admin(request.headers.get("authorization"), admin_token)
    valid_task_id(task_id)
    began = time.perf_counter()
    return _answer(await remove(task_id), began, {"task_id": task_id, "removed": True})


def _answer(reply: ChangeReply, began: float, body: dict) -> JSONResponse:
    """The board answers once every replica serves the change (202 if some did not within the timeout, or
    if no replica is alive to serve it: stored, served by none yet)."""
    if not reply.ok:
        raise ApiError(reply.status, reply.message)
    everywhere = bool(reply.replicas) and not reply.pending
    body.update(servable_everywhere=everywhere, replicas=len(reply.replicas), pending=list(reply.pending),
                seconds=round(time.perf_counter() - began, 4))
    return JSONResponse(body, status_code=reply.status if everywhere else 202)
