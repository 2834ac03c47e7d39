"""A small client of the service's admin API: what the training sidecar uses to register its results."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

BUSY_RETRIES = 5  # a service refusing with 503 and Retry-After (overloaded) is asked again this often


class RegistrationError(RuntimeError):
    """The service refused or could not take an adapter."""


def register_adapter(base_url: str, task_id: str, data: bytes, token: str, timeout_s: float = 120.0) -> dict:
    """PUTs an adapter file; returns the service's answer (task, servable_everywhere, ...). A 503 with
    Retry-After is asked again after the time it names: the file is the same, so a second version of it
    changes nothing a prediction sees."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/v1/tasks/{task_id}", data=data, method="PUT",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/octet-stream"})
    retries = 0
    while True:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            retry_after = exc.headers.get("Retry-After", "") if exc.code == 503 else ""
            if not retry_after.isdigit() or retries == BUSY_RETRIES:
                raise RegistrationError(f"{exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc
            retries += 1
            time.sleep(int(retry_after))
        except urllib.error.URLError as exc:
            raise RegistrationError(f"cannot reach {base_url}: {exc.reason}") from exc
