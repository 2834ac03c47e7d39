"""The adapter store in an S3 bucket, for replicas on several machines that share no filesystem.

Under the prefix: `tasks/<task>/v000001-<sha256>.safetensors`, each version under its content's hash, and
`manifests/000000000001.json`, one object per manifest generation. A writer uploads its files, then creates
the next generation with a create-only write (If-None-Match: *): of two writers racing, one wins and the
other reads the winner's manifest and tries again, so writers on any machine need no lock. Objects appear
whole or not at all, so a crash leaves the newest generation complete and every file it names complete;
files no generation names are garbage (`collect_garbage`). Readers take the newest generation.

Credentials, region and endpoint come from the usual AWS environment (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL...).
Files are fetched once into a local cache under their hash and checked against it on arrival.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..adapters.atomic_write import write_atomically
from .errors import AdapterSourceError, StoreError
from .manifest import EMPTY, VERSION_FILE, Change, Manifest, Store, StoreEntry, newest_files, replaced
from .task_ids import validate_task_id

GENERATION = re.compile(r"(\d{12})\.json")
KEEP_GENERATIONS = 8  # a reader that listed the newest still finds it after a few more commits
MAX_ATTEMPTS = 30
GARBAGE_GRACE_S = 3600.0  # a file younger than this may belong to a publish still in progress
log = logging.getLogger(__name__)
T = TypeVar("T")


class ObjectAdapterStore(Store):
    """Task versions as objects under `s3://bucket/prefix`, committed by create-only manifest generations."""

    def __init__(self, url: str, cache_dir: str | None = None) -> None:
        try:
            import s3fs
        except ImportError as exc:
            raise StoreError(f"the store {url!r} needs s3fs: pip install 'mosaserve[s3]'") from exc
        self.url = url.rstrip("/")
        self.prefix = self.url.removeprefix("s3://")
        if not self.prefix:
            raise StoreError(f"the store {url!r} names no bucket")
        self.fs = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)
        self.cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "mosaserve-store-cache"
        self._lock = threading.Lock()
        self._generation, self._manifest = 0, EMPTY
        bucket = self.prefix.split("/")[0]
        if not self.fs.exists(bucket):
            raise StoreError(f"the store's bucket {bucket!r} does not exist (or these credentials cannot see it)")
        self._refresh()

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _generation_key(self, generation: int) -> str:
        return self._key(f"manifests/{generation:012d}.json")

    def _generations(self) -> list[int]:
        try:
            names = self.fs.ls(self._key("manifests"), detail=False)
        except FileNotFoundError:
            return []
        return [int(m.group(1)) for n in names if (m := GENERATION.fullmatch(n.rsplit("/", 1)[-1]))]

    def _newest_generation(self) -> int:
        return max(self._generations(), default=0)

    def _refresh(self) -> None:
        for _ in range(MAX_ATTEMPTS):
            generation = self._newest_generation()
            if generation == self._generation:
                return
            try:
                raw = self.fs.cat_file(self._generation_key(generation))
            except FileNotFoundError:
                continue  # pruned after newer ones were committed: list again
            try:
                self._generation, self._manifest = generation, Manifest.decode(raw, self._generation_key(generation))
            except StoreError as exc:
                self._recover(exc, generation)
            return
        raise StoreError(f"the store {self.url} changed faster than it could be read")

    def _recover(self, error: StoreError, generation: int) -> None:
        """A manifest that cannot be read (written by hand, or by another program): the newest file of each
        task becomes the next generation; the unreadable one stays for a person to look at."""
        names = [n.removeprefix(self.prefix + "/") for n in self.fs.find(self._key("tasks"))]
        manifest = Manifest(newest_files(names), {})
        self._generation = generation
        if self._create(generation + 1, manifest):
            log.error("%s; rebuilt it from the files as generation %d: %s", error, generation + 1,
                      {t: e.version for t, e in sorted(manifest.entries.items())})
        else:
            self._refresh()  # another process rebuilt it or committed meanwhile

    def _create(self, generation: int, manifest: Manifest) -> bool:
        """Commits `manifest` as `generation` unless another writer did first."""
        try:
            self.fs.pipe_file(self._generation_key(generation), manifest.encode(), mode="create")
        except FileExistsError:
            return False
        self._generation, self._manifest = generation, manifest
        try:
            self.fs.rm_file(self._generation_key(generation - KEEP_GENERATIONS))
        except FileNotFoundError:
            pass
        return True

    def _commit(self, change: Callable[[Manifest], tuple[Manifest | None, T]]) -> T:
        """Applies `change` (the new manifest, or None for no change; and its result) to the newest manifest
        until a generation commits it."""
        with self._lock:
            for attempt in range(MAX_ATTEMPTS):
                self._refresh()
                manifest, result = change(self._manifest)
                if manifest is None or self._create(self._generation + 1, manifest):
                    return result
                time.sleep(random.uniform(0, 0.01 * 2 ** min(attempt, 6)))  # others are writing: back off
        raise StoreError(f"the store {self.url} kept changing under {MAX_ATTEMPTS} tries to publish")

    def entries(self) -> dict[str, StoreEntry]:
        """The live entries, as of the newest manifest generation in the bucket now."""
        with self._lock:
            self._refresh()
            return dict(self._manifest.entries)

    def path_of(self, entry: StoreEntry) -> Path:
        """A local copy of the entry's file: fetched once, checked against the hash in its name."""
        digest = _digest(entry.file)
        if digest is None:
            raise StoreError(f"the store's file {entry.file!r} carries no content hash")
        path = self.cache / f"{digest}.safetensors"
        if not path.exists():
            data = self.fs.cat_file(self._key(entry.file))
            if hashlib.sha256(data).hexdigest() != digest:
                raise StoreError(f"{self._key(entry.file)} does not hold the bytes its name hashes: damaged in the bucket")
            write_atomically(path, data)
        return path

    def _keep_local(self, entry: StoreEntry, data: bytes) -> None:
        """Caches what this process just uploaded, so serving it needs no download."""
        path = self.cache / f"{_digest(entry.file)}.safetensors"
        if not path.exists():
            write_atomically(path, data)

    def publish_changes(self, files: dict[str, bytes]) -> dict[str, Change]:
        """As the local store's: every file, then one manifest generation; the live bytes again change nothing."""
        def change(manifest: Manifest) -> tuple[Manifest | None, dict[str, Change]]:
            changes = manifest.plan(files, _holds, _file_name)
            for task_id, (previous, entry) in changes.items():
                if previous != entry:  # uploaded again on a retry: another writer may have removed it since
                    self.fs.pipe_file(self._key(entry.file), files[task_id])
            return manifest.with_changes(changes), changes

        changes = self._commit(change)
        for task_id, (_, entry) in changes.items():
            self._keep_local(entry, files[task_id])
        self._delete([e.file for e in replaced(changes)])
        return changes

    def remove(self, task_id: str) -> StoreEntry | None:
        validate_task_id(task_id)

        def change(manifest: Manifest) -> tuple[Manifest | None, StoreEntry | None]:
            previous = manifest.entries.get(task_id)
            return (None if previous is None else manifest.without(task_id)), previous

        previous = self._commit(change)
        if previous is not None:
            self._delete([previous.file])
        return previous

    def _delete(self, names: list[str]) -> None:
        for name in names:
            try:
                self.fs.rm_file(self._key(name))
            except FileNotFoundError:
                pass

    def collect_garbage(self, grace_s: float = GARBAGE_GRACE_S) -> list[str]:
        """Deletes files no manifest names and older than `grace_s` (younger ones may be a publish in
        progress on another machine), and manifest generations older than the few kept."""
        with self._lock:
            self._refresh()
            live = {e.file for e in self._manifest.entries.values()}
            now, stray = time.time(), []
            for key, info in self.fs.find(self._key("tasks"), detail=True).items():
                name = key.removeprefix(self.prefix + "/")
                if name not in live and now - info["LastModified"].timestamp() > grace_s:
                    stray.append(name)
            self._delete(stray)
            self._delete([f"manifests/{g:012d}.json" for g in self._generations()
                          if g <= self._generation - KEEP_GENERATIONS])
            return stray


def _file_name(task_id: str, version: int, data: bytes) -> str:
    return f"tasks/{task_id}/v{version:06d}-{hashlib.sha256(data).hexdigest()}.safetensors"


def _digest(name: str) -> str | None:
    match = VERSION_FILE.fullmatch(name)
    return match.group(3) if match else None


def _holds(entry: StoreEntry, data: bytes) -> bool:
    return _digest(entry.file) == hashlib.sha256(data).hexdigest()


def read_object(url: str, limit: int) -> bytes:
    """At most `limit` + 1 bytes of the object at `url` (s3://bucket/key): one byte more tells it is too large."""
    if not url.startswith("s3://") or "/" not in url.removeprefix("s3://").strip("/"):
        raise AdapterSourceError(f"a source is an s3://bucket/key URL, got {url!r}")
    try:
        import s3fs

        return s3fs.S3FileSystem(use_listings_cache=False).cat_file(url, start=0, end=limit + 1)
    except ImportError as exc:
        raise AdapterSourceError("registering from s3:// needs s3fs: pip install 'mosaserve[s3]'") from exc
    except OSError as exc:  # s3fs's translation of missing objects, denied access, unreachable endpoints
        raise AdapterSourceError(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
