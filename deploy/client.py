"""A small client of the service's admin API: what the training sidecar uses to register its results."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


class RegistrationError(RuntimeError):
    """The service refused or could not take an adapter."""


def register_adapter(base_url: str, task_id: str, data: bytes, token: str, timeout_s: float = 120.0) -> dict:
    """PUTs an adapter file; returns the service's answer (task, servable_everywhere, ...)."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/v1/tasks/{task_id}", data=data, method="PUT",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RegistrationError(f"{exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc
    except urllib.error.URLError as exc:
        raise RegistrationError(f"cannot reach {base_url}: {exc.reason}") from exc
