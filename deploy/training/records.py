"""Training jobs on disk, so that a restarted sidecar knows every job and resumes unfinished ones.

One folder per job under `jobs_dir`:
- `job.json`: the request and the status, rewritten on every change (submitted, started, each
  epoch end, cancel requested, finished);
- `checkpoint.safetensors`: the run's state at its last epoch end (adapters/train_state.py),
  deleted once the job has finished.
Both are only ever replaced whole (temp file, fsync, rename), so a crash at any moment leaves the
previous or the next version of each, never a torn one; a crash's temp files are removed on the
next start. Nothing here is ever read by the serving side: a task becomes visible only through
the store. One sidecar at a time owns the folder, by an `flock` the OS drops when its process dies.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from ...adapters.atomic_write import write_atomically
from ...adapters.train_state import TrainState, load_train_state, save_train_state
from .jobs import JobStatus, TrainRequest

log = logging.getLogger(__name__)

RECORD, CHECKPOINT, LOCK = "job.json", "checkpoint.safetensors", ".lock"
RECORD_FORMAT = "mosaserve-train-job"


class JobRecordsBusyError(RuntimeError):
    """Another training sidecar owns the jobs folder."""


@dataclass(frozen=True)
class JobRecord:
    request: TrainRequest
    status: JobStatus


class JobRecords:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._writing = threading.Lock()  # one snapshot-and-write at a time: the last write is the latest state
        self._owner: IO | None = None

    def take_ownership(self, timeout_s: float) -> None:
        """Waits until no other sidecar holds the folder (e.g. one still shutting down), then holds it."""
        handle = open(self.root / LOCK, "a")  # noqa: SIM115 - held open for the sidecar's lifetime
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._owner = handle
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.close()
                    raise JobRecordsBusyError(f"another training sidecar holds {self.root / LOCK} "
                                              f"after {timeout_s:.0f} s; two sidecars must not share a jobs_dir")
                time.sleep(0.2)

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def save(self, request: TrainRequest, job: JobStatus) -> None:
        with self._writing:
            doc = {"format": RECORD_FORMAT, "request": asdict(request), "status": job.to_dict()}
            write_atomically(self.folder(job.job_id) / RECORD, json.dumps(doc, indent=1).encode())

    def load_all(self) -> list[JobRecord]:
        """Every readable record, oldest first; a crash's temp files are removed on the way."""
        records = []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for stray in folder.glob(".*.tmp"):
                stray.unlink(missing_ok=True)
            record = self._read(folder)
            if record is not None:
                records.append(record)
            elif not any(folder.iterdir()):
                folder.rmdir()  # a crash before the job's first record was complete
        return sorted(records, key=lambda r: r.status.created_at)

    def _read(self, folder: Path) -> JobRecord | None:
        path = folder / RECORD
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            if doc.get("format") != RECORD_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {RECORD_FORMAT!r}")
            return JobRecord(TrainRequest(**doc["request"]), JobStatus(**doc["status"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("skipping unreadable training job record %s: %s", path, exc)
            return None

    def forget(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    # --- checkpoints ------------------------------------------------------------------------
    def checkpoint_path(self, job_id: str) -> Path:
        return self.folder(job_id) / CHECKPOINT

    def save_checkpoint(self, job_id: str, state: TrainState) -> None:
        save_train_state(self.checkpoint_path(job_id), state)

    def load_checkpoint(self, job_id: str) -> TrainState | None:
        """The job's last checkpoint; None if it has none; `TrainStateError` if it cannot be read."""
        path = self.checkpoint_path(job_id)
        return load_train_state(path) if path.exists() else None

    def drop_checkpoint(self, job_id: str) -> None:
        self.checkpoint_path(job_id).unlink(missing_ok=True)
