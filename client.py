"""A Python client of a running mosaserve service (standard library only: no dependency to install).

    from mosaserve.client import Client
    service = Client("http://127.0.0.1:8000", token="...")   # the token only for admin calls
    service.register("digits", "out/demo/mnist-mosa.safetensors")
    service.predict("digits", "seven.png", top_k=3)           # {"task_id", "version", "predictions": [...]}
    service.wait(service.train("flowers", "folder:flowers")["job_id"])

Every refusal raises a `ServiceError` subclass named for its status, with the service's message. A 503
that names a Retry-After (the service is full for now) is asked again after that time, up to `retries`
times with a growing pause: every call is safe to repeat (an upload of the live version's bytes
changes nothing).
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

Image = Union[bytes, str, Path]  # encoded JPEG/PNG/WebP bytes, or the path of such a file


class ServiceError(RuntimeError):
    """The service refused a call; `status` is its HTTP status (0: the service could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message = status, message


class BadRequestError(ServiceError):
    """400: the request is malformed (image, parameters, task id)."""


class UnauthorizedError(ServiceError):
    """401 / 403: an admin call without the right token, or admin calls are disabled."""


class NotFoundError(ServiceError):
    """404: no such task, task version or training job."""


class TooLargeError(ServiceError):
    """413: the body, an image or the request's rows pass one of the service's limits."""


class InvalidAdapterError(ServiceError):
    """422: the adapter file does not fit the served backbone, or is not an adapter file."""


class ServiceBusyError(ServiceError):
    """503: still full after every retry; try later or send less."""


class DeadlineExceededError(ServiceError):
    """504: no answer within the request's deadline."""


class UnreachableError(ServiceError):
    """No HTTP answer at all: the service is down, the URL is wrong or no answer came within timeout_s."""


ERRORS = {400: BadRequestError, 401: UnauthorizedError, 403: UnauthorizedError, 404: NotFoundError,
          413: TooLargeError, 422: InvalidAdapterError, 503: ServiceBusyError, 504: DeadlineExceededError}
FINISHED_JOB = ("succeeded", "failed", "cancelled")


class Client:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 120.0, retries: int = 5) -> None:
        self.url, self.token, self.timeout_s, self.retries = url.rstrip("/"), token, timeout_s, retries

    # --- predictions -------------------------------------------------------------------------
    def predict(self, task: str, images: Image | Sequence[Image], top_k: int | None = None,
                timeout_ms: int | None = None) -> dict:
        """One task's answer for one image or a list of them: {"task_id", "version", "predictions": [...]}."""
        return self._call("POST", f"/v1/tasks/{_quoted(task)}/predict", _images_body(images),
                          query={"top_k": top_k}, timeout_ms=timeout_ms)

    def predict_many(self, tasks: Sequence[str], images: Image | Sequence[Image], top_k: int | None = None,
                     timeout_ms: int | None = None) -> list[dict]:
        """Several tasks' answers for the same image(s) in one request (decoded once), in the order of `tasks`."""
        answer = self._call("POST", "/v1/predict", _images_body(images),
                            query={"tasks": ",".join(tasks), "top_k": top_k}, timeout_ms=timeout_ms)
        return answer["tasks"]

    # --- tasks -------------------------------------------------------------------------------
    def tasks(self, page_size: int = 1000) -> list[dict]:
        """Every registered task in brief (the bare backbone first), read page by page."""
        listed, after = [], None
        while True:
            page = self._call("GET", "/v1/tasks", query={"after": after, "limit": page_size})
            listed += page["tasks"]
            after = page["next"]
            if after is None:
                return listed

    def task(self, task: str) -> dict:
        return self._call("GET", f"/v1/tasks/{_quoted(task)}")

    def register(self, task: str, adapter: bytes | str | Path) -> dict:
        """Uploads an adapter file (its bytes or its path), or has the service fetch it from an s3:// URL;
        answers the task and whether every replica serves it."""
        if isinstance(adapter, str) and adapter.startswith("s3://"):
            body = (json.dumps({"source": adapter}).encode(), "application/json")
        else:
            body = (_file_bytes(adapter), "application/octet-stream")
        return self._call("PUT", f"/v1/tasks/{_quoted(task)}", body, admin=True)

    def register_many(self, adapters: Mapping[str, bytes | str | Path]) -> dict:
        """Uploads many adapter files ({task id: bytes or path}) in one request: all validated before any is
        published, then served together. Answers each task's version and whether it changed."""
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for task, adapter in adapters.items():
                data = _file_bytes(adapter)
                member = tarfile.TarInfo(f"{task}.safetensors")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        return self._call("POST", "/v1/tasks", (archive.getvalue(), "application/x-tar"), admin=True)

    def remove(self, task: str) -> dict:
        return self._call("DELETE", f"/v1/tasks/{_quoted(task)}", admin=True)

    # --- training ----------------------------------------------------------------------------
    def train(self, task: str, dataset: str, **options: Any) -> dict:
        """Starts a training job (options: method, epochs, train_size, test_size, lr, seed); answers the job."""
        body = json.dumps({"task_id": task, "dataset": dataset, **options}).encode()
        return self._call("POST", "/v1/train", (body, "application/json"), admin=True)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/train/{_quoted(job_id)}", admin=True)

    def cancel(self, job_id: str) -> dict:
        return self._call("DELETE", f"/v1/train/{_quoted(job_id)}", admin=True)

    def wait(self, job_id: str, timeout_s: float = 3600.0, poll_s: float = 1.0) -> dict:
        """The job once it has finished (succeeded, failed or cancelled); TimeoutError if it runs past `timeout_s`."""
        give_up = time.monotonic() + timeout_s
        while (job := self.job(job_id))["state"] not in FINISHED_JOB:
            if time.monotonic() > give_up:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s} s")
            time.sleep(poll_s)
        return job

    # --- the wire ----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: tuple[bytes, str] | None = None, query: dict | None = None,
              admin: bool = False, timeout_ms: int | None = None) -> dict:
        request, attempt = self._request(method, path, body, query, admin, timeout_ms), 0
        while True:
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                retry_after = exc.headers.get("Retry-After", "")
                if exc.code != 503 or not retry_after.isdigit() or attempt == self.retries:
                    raise _error(exc) from exc
                time.sleep(max(int(retry_after), 0.25 * 2**attempt))  # the service's wait, growing if it says 0
                attempt += 1
            except urllib.error.URLError as exc:
                raise UnreachableError(0, f"cannot reach {self.url}: {exc.reason}") from exc
            except (TimeoutError, ConnectionError) as exc:  # urllib lets these through unwrapped
                raise UnreachableError(0, f"no answer from {self.url} ({type(exc).__name__}: {exc})") from exc

    def _request(self, method: str, path: str, body: tuple[bytes, str] | None, query: dict | None, admin: bool,
                 timeout_ms: int | None) -> urllib.request.Request:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        headers = {} if body is None else {"Content-Type": body[1]}
        if admin:
            if not self.token:
                raise UnauthorizedError(401, f"{method} {path} is an admin call: give Client a token")
            headers["Authorization"] = f"Bearer {self.token}"
        if timeout_ms is not None:
            headers["X-Request-Timeout-Ms"] = str(timeout_ms)
        return urllib.request.Request(url, data=None if body is None else body[0], method=method, headers=headers)


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _read_image(image: Image) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _images_body(images: Image | Sequence[Image]) -> tuple[bytes, str]:
    """One image goes as the raw body; several as JSON base64."""
    if isinstance(images, (bytes, str, Path)):
        return _read_image(images), "application/octet-stream"
    encoded = [base64.b64encode(_read_image(image)).decode() for image in images]
    return json.dumps({"images": encoded}).encode(), "application/json"


def _error(exc: urllib.error.HTTPError) -> ServiceError:
    raw = exc.read().decode(errors="replace")
    try:
        message = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        message = raw[:500] or exc.reason
    return ERRORS.get(exc.code, ServiceError)(exc.code, str(message))


def _file_bytes(adapter: bytes | str | Path) -> bytes:
    return adapter if isinstance(adapter, bytes) else Path(adapter).read_bytes()
