"""The adapter store: one file per task version in a directory, and a manifest naming the live ones.

Publishing writes the adapter file under a fresh name (temp file, fsync, rename), then the new
manifest the same way, then fsyncs the directory. A crash at any point leaves either the old or the
new manifest, and every file a manifest names is complete, so a restart restores every task that
was acknowledged at its acknowledged version. Files no manifest names are garbage from a crash
and are ignored (and removed by `collect_garbage`).

Several processes (the replicas of a served application) may share one store: writers take an
exclusive `flock` on `.lock`, and readers re-read the manifest whenever its bytes changed.

A task's versions count up and are never handed out twice, across removals too (the manifest keeps a
removed task's last version): a replica that missed a removal and a re-registration must still see
that the version it holds is not the one the store names.

A manifest that cannot be read (torn by storage that lost the fsync'd bytes, or edited by hand) is
copied aside and rebuilt from the files: the newest complete version of each task. Files only
appear under their final name once complete, so each is whole; the limit is that a task removed
just before the damage, whose file was not yet deleted, comes back, and a version written but
never committed by the manifest may be chosen over the committed one. A rebuilt manifest no longer
knows the last versions of removed tasks, so one registered again starts over at 1.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..adapters.atomic_write import write_atomically
from .errors import StoreError
from .task_ids import validate_task_id

MANIFEST = "manifest.json"
VERSION_FILE = re.compile(r"v(\d{6})\.safetensors")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreEntry:
    task_id: str
    version: int
    file: str  # relative to the store root


class AdapterStore:
    """Task versions as files in a directory, published atomically and durably under a manifest."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        (self.root / "tasks").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # The manifest's bytes as last read or written: the same bytes need no parse (a few KB to compare,
        # where inode, size and a coarse mtime can repeat for two different manifests).
        self._seen: bytes | None = None
        self._entries: dict[str, StoreEntry] = {}
        self._retired: dict[str, int] = {}  # removed tasks' last versions
        self._refresh()

    @contextmanager
    def _writing(self):
        """Excludes other writers, in this process (lock) and in others sharing the directory (flock)."""
        with self._lock, self._flocked():
            self._refresh(holding_flock=True)  # another process may have published since we last looked
            yield

    @contextmanager
    def _flocked(self):
        """Excludes other processes writing to the directory."""
        with open(self.root / ".lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _refresh(self, holding_flock: bool = False) -> None:
        path = self.root / MANIFEST
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self._seen, self._entries, self._retired = None, {}, {}
            return
        if raw == self._seen:
            return
        try:
            (self._entries, self._retired), self._seen = self._read_manifest(raw, path), raw
        except StoreError as exc:
            if holding_flock:
                self._recover(exc)
            else:
                with self._flocked():
                    self._recover(exc)
            self._refresh(holding_flock)  # read what was rebuilt (here or by another process meanwhile)

    def _recover(self, error: StoreError) -> None:
        path = self.root / MANIFEST
        try:
            self._read_manifest(path.read_bytes(), path)
            return  # another process rebuilt it while we waited for the lock
        except StoreError:
            pass
        entries = self._entries_from_files()
        aside = path.with_name(f"{MANIFEST}.unreadable-{time.time_ns()}")
        shutil.copyfile(path, aside)  # a copy, then a replace: readers never find the manifest missing
        self._write_manifest(entries, {})
        log.error("%s; copied it to %s and rebuilt it from the files: %s", error, aside.name,
                  {t: e.version for t, e in sorted(entries.items())})

    def _entries_from_files(self) -> dict[str, StoreEntry]:
        entries = {}
        for folder in sorted(f for f in (self.root / "tasks").iterdir() if f.is_dir() and _is_task_id(f.name)):
            versions = [int(m.group(1)) for f in folder.iterdir() if (m := VERSION_FILE.fullmatch(f.name))]
            if versions:
                version = max(versions)
                entries[folder.name] = StoreEntry(folder.name, version, f"tasks/{folder.name}/v{version:06d}.safetensors")
        return entries

    @staticmethod
    def _read_manifest(raw: bytes, path: Path) -> tuple[dict[str, StoreEntry], dict[str, int]]:
        """(live entries, removed tasks' last versions); manifests written before the second have none."""
        try:
            doc = json.loads(raw)
            entries = {t: StoreEntry(validate_task_id(t), int(e["version"]), str(e["file"])) for t, e in doc["tasks"].items()}
            retired = {validate_task_id(t): int(v) for t, v in doc.get("retired", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise StoreError(f"store manifest {path} is unreadable: {exc}") from exc
        return entries, retired

    def _write_manifest(self, entries: dict[str, StoreEntry], retired: dict[str, int]) -> None:
        doc = {"tasks": {t: {"version": e.version, "file": e.file} for t, e in sorted(entries.items())},
               "retired": dict(sorted(retired.items()))}
        data = json.dumps(doc, indent=1).encode()
        write_atomically(self.root / MANIFEST, data)
        # Callers hold the flock and keep what they wrote as theirs: no need to read it back.
        self._entries, self._retired, self._seen = entries, retired, data

    def entries(self) -> dict[str, StoreEntry]:
        """The live entries, as of the manifest on disk now (other processes may publish too)."""
        with self._lock:
            self._refresh()
            return dict(self._entries)

    def path_of(self, entry: StoreEntry) -> Path:
        return self.root / entry.file

    def publish(self, task_id: str, data: bytes) -> StoreEntry:
        """Durably stores a (validated) adapter file as the next version of `task_id`; see `publish_change`."""
        return self.publish_change(task_id, data)[1]

    def publish_change(self, task_id: str, data: bytes) -> tuple[StoreEntry | None, StoreEntry]:
        """(the entry before, the live entry after). The same bytes as the live version change nothing
        and return its entry: sending a file again (a client's retry after a lost answer, a training
        job resumed after its publish) never makes a new version."""
        return self.publish_changes({task_id: data})[task_id]

    def publish_changes(self, files: dict[str, bytes]) -> dict[str, tuple[StoreEntry | None, StoreEntry]]:
        """`publish_change` for many tasks in one pass under one manifest write: all of them or, after a
        crash, none."""
        for task_id in files:
            validate_task_id(task_id)
        with self._writing():
            changes = {}
            for task_id, data in files.items():
                previous = self._entries.get(task_id)
                if previous is not None and self._holds(previous, data):
                    changes[task_id] = previous, previous
                    continue
                version = max(previous.version if previous else 0, self._retired.get(task_id, 0)) + 1
                entry = StoreEntry(task_id, version, f"tasks/{task_id}/v{version:06d}.safetensors")
                write_atomically(self.root / entry.file, data)
                changes[task_id] = previous, entry
            new = {task_id: entry for task_id, (previous, entry) in changes.items() if previous != entry}
            if new:
                retired = {t: v for t, v in self._retired.items() if t not in new}
                self._write_manifest({**self._entries, **new}, retired)  # the commit point
            for previous, entry in changes.values():
                if previous is not None and previous != entry:
                    self.path_of(previous).unlink(missing_ok=True)
            return changes

    def _holds(self, entry: StoreEntry, data: bytes) -> bool:
        path = self.path_of(entry)
        try:
            return path.stat().st_size == len(data) and path.read_bytes() == data
        except OSError:  # unreadable: publish a new version rather than trust it
            return False

    def remove(self, task_id: str) -> StoreEntry | None:
        with self._writing():
            previous = self._entries.get(task_id)
            if previous is None:
                return None
            entries = {t: e for t, e in self._entries.items() if t != task_id}
            self._write_manifest(entries, {**self._retired, task_id: previous.version})
            self.path_of(previous).unlink(missing_ok=True)
            return previous

    def collect_garbage(self) -> list[Path]:
        """Deletes files no manifest entry names (left by a crash before the manifest was written)."""
        with self._writing():
            live = {self.root / e.file for e in self._entries.values()}
            stray = [p for p in (self.root / "tasks").rglob("*") if p.is_file() and p not in live]
            for path in stray:
                path.unlink(missing_ok=True)
            return stray


def _is_task_id(name: str) -> bool:
    try:
        validate_task_id(name)
    except ValueError:
        return False
    return True
