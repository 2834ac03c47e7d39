"""The checked-in bad-input corpus against the served application, with valid traffic running alongside.

Regenerate the corpus with `python -m mosaserve.loadtests.bad_inputs --out tests/data/bad_inputs`.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import requests
from PIL import Image

from mosaserve.loadtests.bad_inputs import CORPUS_BACKBONE, corpus_digest, write_corpus
from mosaserve.loadtests.corpus_case import Limits
from mosaserve.loadtests.corpus_sender import load_manifest, problem, send_all

from ..conftest import TINY_VIT
from .conftest import TOKEN

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"
PWNED = Path("/tmp/mosaserve-corpus-pwned")  # what the corpus's pickles would create if anything unpickled them


def encoded(size: tuple[int, int], fmt: str) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(out, fmt)
    return out.getvalue()


def assumptions_hold(service, assumes: dict) -> None:
    """The expected statuses were written for these limits and this backbone."""
    config = service.config
    assert assumes["limits"] == asdict(Limits(config.limits.max_request_bytes, config.limits.max_image_pixels,
                                              config.limits.max_images_per_request, config.runtime.max_adapter_bytes,
                                              config.limits.max_request_pixels))
    assert (CORPUS_BACKBONE.name, CORPUS_BACKBONE.kwargs) == (TINY_VIT.name, TINY_VIT.kwargs)
    assert assumes["backbone"]["fingerprint"] == service.info.fingerprint
    served = requests.get(f"{service.url}/v1/tasks/__backbone__", timeout=30).json()["backbone"]
    assert served["fingerprint"] == service.info.fingerprint  # loaded from its checkpoint: the same weights


class ValidTraffic:
    """Valid predictions sent one after another while the corpus is being sent; every one must succeed."""

    def __init__(self, service, task_id: str) -> None:
        self.service, self.task_id = service, task_id
        self.stop, self.served, self.failures = threading.Event(), 0, []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        bodies = [(self.task_id, encoded((20, 20), "PNG"), "image/png"),
                  (self.task_id, encoded((24, 18), "JPEG"), "image/jpeg"),
                  ("__backbone__", encoded((16, 16), "PNG"), "image/png")]
        while not self.stop.is_set():
            task_id, body, content_type = bodies[self.served % len(bodies)]
            reply = self.service.predict(task_id, body, content_type)
            if reply.status_code == 200 and reply.json()["predictions"]:
                self.served += 1
            else:
                self.failures.append((reply.status_code, reply.text[:300]))

    def __enter__(self) -> "ValidTraffic":
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def is_task_change(case: dict) -> bool:
    return case["method"] in ("PUT", "DELETE") and case["path"].startswith("/v1/tasks/")


def test_every_bad_input_is_refused_with_its_4xx_while_valid_requests_succeed(service):
    manifest = load_manifest(CORPUS)
    assumptions_hold(service, manifest["assumes"])
    task_id = manifest["assumes"]["registered_task"]
    assert service.put(task_id, service.adapter(seed=71)[0]).status_code == 201
    PWNED.unlink(missing_ok=True)

    began = time.perf_counter()
    with ValidTraffic(service, task_id) as traffic:
        time.sleep(0.5)  # valid traffic is flowing before the first bad request
        results = send_all(service.url, CORPUS, TOKEN, threads=4)
        # The task board's admin port takes the same task changes: the same answers, or it is a way around them.
        admin_url = requests.get(f"{service.url}/healthz", timeout=30).json()["admin_url"]
        admin_results = send_all(admin_url, CORPUS, TOKEN, threads=4, only=is_task_change)
    seconds = time.perf_counter() - began

    statuses = Counter(reply.status for _, reply in results)
    print(f"\n{len(results)} corpus cases in {seconds:.1f} s, statuses {dict(sorted(statuses.items()))}; "
          f"{traffic.served} concurrent valid predictions, {len(traffic.failures)} failed")
    assert len(results) == len(manifest["cases"]) >= 200
    assert [p for case, reply in results if (p := problem(case, reply))] == []
    assert not [s for s in statuses if s >= 500]
    assert len(admin_results) >= 100 and [p for case, reply in admin_results if (p := problem(case, reply))] == []
    assert traffic.failures == [] and traffic.served > 0

    health = requests.get(f"{service.url}/healthz", timeout=30)
    assert health.status_code == 200 and health.json() == {"status": "ok", "replicas": 2, "admin_url": admin_url}
    listed = {t["task_id"]: t["version"] for t in requests.get(f"{service.url}/v1/tasks", timeout=30).json()["tasks"]}
    assert listed == {"__backbone__": None, task_id: 1}  # no corpus id registered; bad replacements changed nothing
    store = Path(service.config.runtime.store_dir)
    files = sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())
    assert files == [".lock", "manifest.json", f"tasks/{task_id}/v000001.safetensors"]
    assert not PWNED.exists()


def test_regenerating_the_corpus_reproduces_the_checked_in_one(tmp_path):
    write_corpus(tmp_path)
    assert (tmp_path / "manifest.json").read_text() == (CORPUS / "manifest.json").read_text()
    assert corpus_digest(tmp_path) == corpus_digest(CORPUS)
