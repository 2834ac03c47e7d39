"""The one table from an error's type to its HTTP status, served by a real FastAPI app over loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request

import pytest
import uvicorn
from fastapi import FastAPI
from ray.exceptions import ActorUnavailableError

from mosaserve.adapters.errors import AdapterFileError, BackboneMismatchError
from mosaserve.adapters.images import BadImageError, ImageTooLargeError
from mosaserve.deploy.http.admin import listen
from mosaserve.deploy.http.errors import (AdminDisabled, BadRequest, EmptyUpload, NotFound, TooLarge,
                                          Unauthorized, add_error_handlers, status_of)
from mosaserve.deploy.training.jobs import TrainRequestError
from mosaserve.runtime.errors import (BackboneNotReadyError, DeadlineExceededError, InferenceFailedError,
                                      InvalidTaskIdError, NonFiniteOutputError, ServiceBusyError, UnknownTaskError)

EXPECTED = [
    (BadRequest("x"), 400), (InvalidTaskIdError("x"), 400), (TrainRequestError("x"), 400), (BadImageError("x"), 400),
    (Unauthorized("x"), 401), (AdminDisabled("x"), 403), (NotFound("x"), 404), (UnknownTaskError("x"), 404),
    (TooLarge("x"), 413), (ImageTooLargeError("x"), 413), (EmptyUpload("x"), 422), (AdapterFileError("x"), 422),
    (BackboneMismatchError("x"), 422), (NonFiniteOutputError("x"), 500), (InferenceFailedError("x"), 500),
    (ServiceBusyError("x"), 503), (BackboneNotReadyError("x"), 503),
    (DeadlineExceededError("x"), 504), (ZeroDivisionError("x"), 500),
]


@pytest.mark.parametrize("error, status", EXPECTED, ids=[type(e).__name__ for e, _ in EXPECTED])
def test_every_error_has_one_status_its_most_specific_class_decides(error, status):
    assert status_of(error) == status


@pytest.fixture(scope="module")
def error_app():
    """A FastAPI app with mosaserve's handlers whose one route raises the error named in its path."""
    raising = {type(e).__name__: e for e, _ in EXPECTED if not isinstance(e, ZeroDivisionError)}
    raising["Busy"] = ServiceBusyError("full", retry_after_s=3)
    raising["Restarting"] = ActorUnavailableError("gone", None)
    app = FastAPI()
    add_error_handlers(app)

    @app.api_route("/raise/{name}", methods=["GET", "PUT"])
    async def raise_it(name: str):
        raise raising[name]

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _call(url: str, method: str = "GET"):
    request = urllib.request.Request(url, method=method, data=b"" if method == "PUT" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def test_the_handlers_answer_the_tables_status_in_one_shape(error_app):
    for error, status in EXPECTED:
        if isinstance(error, ZeroDivisionError):
            continue
        code, _, body = _call(f"{error_app}/raise/{type(error).__name__}")
        assert (code, body) == (status, {"error": "x", "status": status}), type(error).__name__


def test_retry_after_and_authenticate_headers_go_with_their_statuses(error_app):
    code, headers, body = _call(f"{error_app}/raise/Busy")
    assert (code, headers.get("Retry-After"), body["error"]) == (503, "3", "full")
    assert _call(f"{error_app}/raise/ServiceBusyError")[1].get("Retry-After") == "1"
    assert _call(f"{error_app}/raise/Unauthorized")[1].get("WWW-Authenticate") == "Bearer"
    code, headers, body = _call(f"{error_app}/raise/Restarting", "PUT")
    assert (code, headers.get("Retry-After")) == (503, "2") and "read it back before sending it again" in body["error"]
    assert "read it back" not in _call(f"{error_app}/raise/Restarting")[2]["error"]  # a GET changed nothing
    code, _, body = _call(f"{error_app}/nowhere")
    assert (code, body["status"]) == (404, 404)  # routing errors keep the shape
