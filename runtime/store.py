"""The local adapter store: one file per task version in a directory, and a manifest naming the live ones.

Publishing writes the adapter file under a fresh name (temp file, fsync, rename), then the new
manifest the same way, then fsyncs the directory. A crash at any point leaves either the old or the
new manifest, and every file a manifest names is complete, so a restart restores every task that
was acknowledged at its acknowledged version. Files no manifest names are garbage from a crash
and are ignored (and removed by `collect_garbage`).

Several processes (the replicas of a served application) may share one store: writers take an
exclusive `flock` on `.lock`, and readers re-read the manifest whenever its bytes changed. Replicas on
several machines share a bucket instead (`object_store.py`); `open_store` picks by location.

A manifest that cannot be read (torn by storage that lost the fsync'd bytes, or edited by hand) is
copied aside and rebuilt from the files: the newest complete version of each task. Files only
appear under their final name once complete, so each is whole; the limit is that a task removed
just before the damage, whose file was not yet deleted, comes back, and a version written but
never committed by the manifest may be chosen over the committed one. A rebuilt manifest no longer
knows the last versions of removed tasks, so one registered again starts over at 1.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..adapters.atomic_write import write_atomically
from .errors import StoreError
from .manifest import EMPTY, Change, Manifest, Store, StoreEntry, newest_files, replaced

MANIFEST = "manifest.json"
log = logging.getLogger(__name__)


class AdapterStore(Store):
    """Task versions as files in a directory, published atomically and durably under a manifest."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        (self.root / "tasks").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # The manifest's bytes as last read or written: the same bytes need no parse (a few KB to compare,
        # where inode, size and a coarse mtime can repeat for two different manifests).
        self._seen: bytes | None = None
        self._manifest = EMPTY
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
            self._seen, self._manifest = None, EMPTY
            return
        if raw == self._seen:
            return
        try:
            self._manifest, self._seen = Manifest.decode(raw, str(path)), raw
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
            Manifest.decode(path.read_bytes(), str(path))
            return  # another process rebuilt it while we waited for the lock
        except StoreError:
            pass
        entries = newest_files(p.relative_to(self.root).as_posix() for p in (self.root / "tasks").glob("*/*"))
        aside = path.with_name(f"{MANIFEST}.unreadable-{time.time_ns()}")
        shutil.copyfile(path, aside)  # a copy, then a replace: readers never find the manifest missing
        self._write_manifest(Manifest(entries, {}))
        log.error("%s; copied it to %s and rebuilt it from the files: %s", error, aside.name,
                  {t: e.version for t, e in sorted(entries.items())})

    def _write_manifest(self, manifest: Manifest) -> None:
        data = manifest.encode()
        write_atomically(self.root / MANIFEST, data)
        # Callers hold the flock and keep what they wrote as theirs: no need to read it back.
        self._manifest, self._seen = manifest, data

    def entries(self) -> dict[str, StoreEntry]:
        """The live entries, as of the manifest on disk now (other processes may publish too)."""
        with self._lock:
            self._refresh()
            return dict(self._manifest.entries)

    def path_of(self, entry: StoreEntry) -> Path:
        return self.root / entry.file

    def publish_changes(self, files: dict[str, bytes]) -> dict[str, Change]:
        with self._writing():
            changes = self._manifest.plan(files, self._holds, lambda t, v, _: f"tasks/{t}/v{v:06d}.safetensors")
            for task_id, (previous, entry) in changes.items():
                if previous != entry:
                    write_atomically(self.root / entry.file, files[task_id])
            committed = self._manifest.with_changes(changes)
            if committed is not None:
                self._write_manifest(committed)  # the commit point
            for entry in replaced(changes):
                self.path_of(entry).unlink(missing_ok=True)
            return changes

    def _holds(self, entry: StoreEntry, data: bytes) -> bool:
        path = self.path_of(entry)
        try:
            return path.stat().st_size == len(data) and path.read_bytes() == data
        except OSError:  # unreadable: publish a new version rather than trust it
            return False

    def remove(self, task_id: str) -> StoreEntry | None:
        with self._writing():
            previous = self._manifest.entries.get(task_id)
            if previous is None:
                return None
            self._write_manifest(self._manifest.without(task_id))
            self.path_of(previous).unlink(missing_ok=True)
            return previous

    def collect_garbage(self) -> list[Path]:
        """Deletes files no manifest entry names (left by a crash before the manifest was written)."""
        with self._writing():
            live = {self.root / e.file for e in self._manifest.entries.values()}
            stray = [p for p in (self.root / "tasks").rglob("*") if p.is_file() and p not in live]
            for path in stray:
                path.unlink(missing_ok=True)
            return stray


def open_store(location: str, cache_dir: str | None = None) -> Store:
    """The store at `location`: `s3://bucket/prefix` for an S3 bucket (its files cached in `cache_dir`), else a
    local folder."""
    if is_object_store(location):
        from .object_store import ObjectAdapterStore

        return ObjectAdapterStore(location, cache_dir)
    return AdapterStore(location)


def is_object_store(location: str) -> bool:
    return location.startswith("s3://")
