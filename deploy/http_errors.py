"""Every error of mosaserve's HTTP APIs (main port and admin port) answers as {"error", "status"}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import ApiError


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse({"error": exc.message, "status": exc.status}, status_code=exc.status, headers=headers)


# Routing and parameter errors answer in the same shape as ours, so a client reads every 4xx the same way.
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail), "status": exc.status_code}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _parameter_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{' '.join(map(str, e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in exc.errors())
    return JSONResponse({"error": f"invalid request: {problems}", "status": 400}, status_code=400)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _parameter_error)
