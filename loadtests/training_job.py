"""A training job run beside a load test, from its submission to its task being live: through the training
sidecar's API, or as `mosaserve train --register` on the same machine (the way a user would run either)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

TRAINERS = ("sidecar", "cli", "cli-full-priority")
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class TrainingJobSpec:
    trainer: str = "sidecar"  # one of TRAINERS
    task_id: str = "trained-under-load"
    dataset: str = "digits"
    epochs: int = 3
    train_size: int = 500
    test_size: int = 200


class TrainingJob:
    """Started on a thread `start_after_s` from now; `outcome()` waits for it and tells how it ended."""

    def __init__(self, spec: TrainingJobSpec, url: str, token: str | None, out_dir: Path, start_after_s: float) -> None:
        if spec.trainer not in TRAINERS:
            raise ValueError(f"unknown trainer {spec.trainer!r}: use one of {', '.join(TRAINERS)}")
        if not token:
            raise ValueError("a training job needs the admin token (--token or MOSASERVE_ADMIN_TOKEN)")
        self.spec, self.url, self.token, self.out_dir = spec, url.rstrip("/"), token, out_dir
        self.start_after_s = start_after_s
        self._outcome: dict = {}
        self._thread = threading.Thread(target=self._run, name="training-job", daemon=True)

    def start(self) -> "TrainingJob":
        self._thread.start()
        return self

    def outcome(self, timeout_s: float) -> dict:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            return {"trainer": self.spec.trainer, "state": "still running", "live": False,
                    "submitted_at_s": self.start_after_s}
        return dict(self._outcome)

    def _run(self) -> None:
        time.sleep(self.start_after_s)
        began = time.monotonic()
        try:
            state, detail = self._through_cli() if self.spec.trainer.startswith("cli") else self._through_sidecar()
        except (requests.RequestException, OSError, subprocess.SubprocessError) as exc:
            state, detail = "failed", f"{type(exc).__name__}: {exc}"
        self._outcome = {"trainer": self.spec.trainer, "state": state, "live": state == "succeeded",
                         "submitted_at_s": self.start_after_s, "submit_to_live_s": round(time.monotonic() - began, 2),
                         "detail": detail}

    def _through_sidecar(self) -> tuple[str, str]:
        s = self.spec
        headers = {"Authorization": f"Bearer {self.token}"}
        job = {"task_id": s.task_id, "dataset": s.dataset, "method": "mosa", "epochs": s.epochs,
               "train_size": s.train_size, "test_size": s.test_size}
        submitted = requests.post(f"{self.url}/v1/train", json=job, headers=headers, timeout=30)
        submitted.raise_for_status()
        status_url = f"{self.url}/v1/train/{submitted.json()['job_id']}"
        while True:
            status = requests.get(status_url, headers=headers, timeout=30).json()
            if status["state"] in FINISHED:
                return status["state"], f"test accuracy {status.get('test_accuracy')}"
            time.sleep(0.5)

    def _through_cli(self) -> tuple[str, str]:
        s = self.spec
        command = [sys.executable, "-c", "import sys; from mosaserve.cli import main; sys.exit(main(sys.argv[1:]))",
                   "train", "--dataset", s.dataset, "--methods", "mosa", "--epochs", str(s.epochs),
                   "--train-size", str(s.train_size), "--test-size", str(s.test_size), "--register", self.url,
                   "--task-id", s.task_id, "--out", str(self.out_dir / "trained"), "--no-progress"]
        if self.spec.trainer == "cli-full-priority":
            command.append("--full-priority")
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                              env={**os.environ, "MOSASERVE_ADMIN_TOKEN": self.token})
        return ("succeeded" if done.returncode == 0 else "failed"), (done.stdout + done.stderr)[-300:]
