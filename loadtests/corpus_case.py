"""One case of the bad-input corpus: the request to send and the answer it must get.

A case is written to `manifest.json` with its body in a file of its own, so the corpus can be
read and sent by anything that speaks HTTP. Large bodies are not stored: `body_repeat` and
`pad_to` say how to grow the stored body when sending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Case:
    name: str  # unique; also names the body file
    category: str
    method: str
    path: str  # as sent on the request line: already percent-encoded
    status: int  # the exact status the service must answer
    fragment: str | None  # the error message must contain it; None for a success
    body: bytes | None = None
    content_type: str | None = None
    admin_token: bool = False  # send "Authorization: Bearer <the service's admin token>"
    headers: dict[str, str] = field(default_factory=dict)  # sent as they are (e.g. a wrong Authorization)
    body_repeat: int = 1  # the body is the stored bytes repeated this many times
    pad_to: int | None = None  # then zero bytes appended up to this length
    chunked: bool = False  # sent with Transfer-Encoding: chunked, so no Content-Length announces the size
    note: str = ""  # why this answer

    def to_manifest(self, body_file: str | None) -> dict[str, Any]:
        headers = dict(self.headers)
        if self.content_type is not None:
            headers["Content-Type"] = self.content_type
        return {
            "name": self.name, "category": self.category, "method": self.method, "path": self.path,
            "headers": headers, "admin_token": self.admin_token, "body_file": body_file,
            "body_repeat": self.body_repeat, "pad_to": self.pad_to, "chunked": self.chunked,
            "expected_status": self.status, "error_fragment": self.fragment, "note": self.note,
        }


@dataclass(frozen=True)
class Limits:
    """The service limits the expected statuses assume (the test service's)."""

    max_request_bytes: int = 256 * 1024
    max_image_pixels: int = 1_000_000
    max_images_per_request: int = 4
    max_adapter_bytes: int = 1024 * 1024
    max_request_pixels: int = 2_000_000


def full_body(stored: bytes | None, repeat: int, pad_to: int | None) -> bytes | None:
    """The body as sent: the stored bytes repeated, then zero-padded."""
    if stored is None:
        return None
    body = stored * repeat
    return body + b"\0" * (pad_to - len(body)) if pad_to is not None else body
