"""Sends the bad-input corpus over plain HTTP and checks each answer against the manifest.

    python -m mosaserve.loadtests.corpus_sender --url http://127.0.0.1:8000 --corpus tests/data/bad_inputs \
        --token "$MOSASERVE_ADMIN_TOKEN"

http.client sends the path exactly as the manifest writes it (no normalising of '..' or of
percent-escapes, as higher-level clients do), and bodies chunked when a case says so.
The service must have the valid task registered first (the manifest's "assumes").
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .corpus_case import full_body

CHUNK = 16 * 1024


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    seconds: float


def load_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def body_of(case: dict, folder: Path) -> bytes | None:
    stored = None if case["body_file"] is None else (Path(folder) / case["body_file"]).read_bytes()
    return full_body(stored, case["body_repeat"], case["pad_to"])


def send(url: str, case: dict, folder: Path, admin_token: str | None, timeout_s: float = 60.0) -> Reply:
    base = urlsplit(url)
    headers = dict(case["headers"])
    if case["admin_token"]:
        headers["Authorization"] = f"Bearer {admin_token}"
    body = body_of(case, folder)
    if case["chunked"]:  # an iterable body without Content-Length goes out chunked
        body = iter([body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] if body else [])
    began = time.perf_counter()
    connection = http.client.HTTPConnection(base.hostname, base.port or 80, timeout=timeout_s)
    try:
        try:
            connection.request(case["method"], base.path.rstrip("/") + case["path"], body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) and close before reading a large body: read its answer
        response = connection.getresponse()
        return Reply(response.status, response.read(), time.perf_counter() - began)
    finally:
        connection.close()


def problem(case: dict, reply: Reply) -> str | None:
    """What is wrong with the answer to a case, or None."""
    expected = case["expected_status"]
    text = reply.body[:400].decode("utf-8", "replace")
    if reply.status != expected:
        return f"{case['name']}: expected {expected}, got {reply.status}: {text}"
    try:
        doc = json.loads(reply.body)
    except ValueError:
        return f"{case['name']}: the answer is not JSON: {text}"
    if expected < 400:
        return None
    message = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(message, str) or not message:
        return f"{case['name']}: no error message in {text}"
    if case["error_fragment"] not in message:
        return f"{case['name']}: error {message[:300]!r} lacks {case['error_fragment']!r}"
    return None


def send_all(url: str, folder: Path, admin_token: str | None, threads: int = 4,
             only: Callable[[dict], bool] | None = None) -> list[tuple[dict, Reply]]:
    """Every case, or those `only` picks (the admin port serves task changes alone)."""
    cases = [case for case in load_manifest(folder)["cases"] if only is None or only(case)]
    with ThreadPoolExecutor(threads) as pool:
        replies = list(pool.map(lambda case: send(url, case, folder, admin_token), cases))
    return list(zip(cases, replies))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send the bad-input corpus to a service and check every answer.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--token", help="the service's admin token")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    results = send_all(args.url, args.corpus, args.token, args.threads)
    problems = [p for case, reply in results if (p := problem(case, reply))]
    statuses = Counter(reply.status for _, reply in results)
    print(f"{len(results)} cases in {time.perf_counter() - began:.1f} s; statuses {dict(sorted(statuses.items()))}")
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
