"""Every error of mosaserve's HTTP APIs, in one table from its type to a status; bodies are {"error", "status"}
({"error"} alone on the Open Inference Protocol's /v2 routes).

Routes, replicas and the task board raise or return errors that say what went wrong; only this
module turns them into HTTP statuses, through FastAPI exception handlers on both ports. The admin
routes' bearer-token check (`require_admin`) lives here too: its refusals are two of these errors.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...adapters.errors import AdapterFileError
from ...adapters.images import BadImageError, ImageTooLargeError
from ...runtime.errors import (AdapterSourceError, BackboneNotReadyError, DeadlineExceededError, InferenceFailedError, InvalidTaskIdError,
                               NonFiniteOutputError, ServiceBusyError, UnknownTaskError)
from ..training.jobs import TrainRequestError


class RequestError(Exception):
    """A request refused at the HTTP boundary, before any model work; the subclass says why."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # sent as Retry-After: the condition is expected to pass


class BadRequest(RequestError):
    """The request is malformed: body, parameters or images."""


class Unauthorized(RequestError):
    """An admin route without the admin token."""


class AdminDisabled(RequestError):
    """An admin route while no admin token is configured."""


class NotFound(RequestError):
    """The task version or training job named does not exist."""


class TooLarge(RequestError):
    """The body, an image or the request's pixels pass a configured limit."""


class EmptyUpload(RequestError):
    """A registration without an adapter file."""


# The one table: an error's status is that of the first of its classes (most specific first) listed here.
STATUS: dict[type, int] = {
    BadRequest: 400, InvalidTaskIdError: 400, TrainRequestError: 400, ImageTooLargeError: 413, BadImageError: 400,
    Unauthorized: 401,
    AdminDisabled: 403,
    NotFound: 404, UnknownTaskError: 404,
    TooLarge: 413,
    EmptyUpload: 422, AdapterFileError: 422, AdapterSourceError: 422,
    NonFiniteOutputError: 500, InferenceFailedError: 500,  # a task's adapter, or the service, is at fault
    ServiceBusyError: 503, BackboneNotReadyError: 503,
    RayActorError: 503, ActorUnavailableError: 503,  # a deployment died while answering; Serve restarts it
    DeadlineExceededError: 504,
}
PART_RESTARTING = (RayActorError, ActorUnavailableError)


def status_of(exc: BaseException) -> int:
    """The HTTP status of an error: the table's entry for its most specific listed class, else 500."""
    return next((STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS), 500)


def _message(request: Request, exc: Exception) -> str:
    if not isinstance(exc, PART_RESTARTING):
        return str(exc)
    message = f"a part of the service restarted while answering ({type(exc).__name__}); retry in a few seconds"
    if request.method != "GET":
        message += ". The change may already have been made: read it back before sending it again"
    return message


def _error(request: Request, message: str, status: int, headers: dict | None = None) -> JSONResponse:
    # The Open Inference Protocol's error is {"error": message} alone.
    body = {"error": message} if request.url.path.startswith("/v2") else {"error": message, "status": status}
    return JSONResponse(body, status_code=status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    retry_after_s = 2 if isinstance(exc, PART_RESTARTING) else getattr(exc, "retry_after_s", None)
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return _error(request, _message(request, exc), status, headers)


# Routing and parameter errors answer in the same shape as ours, so a client reads every 4xx the same way.
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(request, str(exc.detail), exc.status_code, getattr(exc, "headers", None))


async def _parameter_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{' '.join(map(str, e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in exc.errors())
    return _error(request, f"invalid request: {problems}", 400)


def add_error_handlers(app: FastAPI) -> None:
    for error_type in (RequestError, *STATUS):
        app.add_exception_handler(error_type, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _parameter_error)


def require_admin(authorization: str | None, token: str | None) -> None:
    """Admin routes (register, replace, remove, train) need `Authorization: Bearer <admin token>`."""
    if not token:
        raise AdminDisabled("admin routes are disabled: no admin token is configured "
                            "(set MOSASERVE_ADMIN_TOKEN or admin_token in the config)")
    scheme, _, given = (authorization or "").partition(" ")
    # Compare in constant time so the token cannot be guessed byte by byte from response times.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("missing or wrong admin token: send Authorization: Bearer <token>")
