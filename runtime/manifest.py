"""What every adapter store agrees on: a manifest naming each task's live version and file, and how versions count.

A task's versions count up and are never handed out twice, across removals too (the manifest keeps a
removed task's last version): a replica that missed a removal and a re-registration must still see
that the version it holds is not the one the store names.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError
from .task_ids import validate_task_id

# A version's file: tasks/<task>/v000001.safetensors, or with its content's sha256 where writers never lock.
VERSION_FILE = re.compile(r"tasks/([^/]+)/v(\d{6})(?:-([0-9a-f]{64}))?\.safetensors")


@dataclass(frozen=True)
class StoreEntry:
    task_id: str
    version: int
    file: str  # relative to the store root


Change = tuple[StoreEntry | None, StoreEntry]  # (the entry before, the live entry after)


class Store(ABC):
    """An adapter store: the local folder (`AdapterStore`) or an S3 bucket (`ObjectAdapterStore`)."""

    @abstractmethod
    def entries(self) -> dict[str, StoreEntry]: ...

    @abstractmethod
    def path_of(self, entry: StoreEntry) -> Path: ...

    @abstractmethod
    def publish_changes(self, files: dict[str, bytes]) -> dict[str, Change]:
        """`publish_change` for many tasks under one manifest commit: all of them or, after a crash, none."""

    @abstractmethod
    def remove(self, task_id: str) -> StoreEntry | None: ...

    def publish(self, task_id: str, data: bytes) -> StoreEntry:
        """Durably stores a (validated) adapter file as the next version of `task_id`; see `publish_change`."""
        return self.publish_change(task_id, data)[1]

    def publish_change(self, task_id: str, data: bytes) -> Change:
        """(the entry before, the live entry after). The same bytes as the live version change nothing
        and return its entry: sending a file again (a client's retry after a lost answer, a training
        job resumed after its publish) never makes a new version."""
        return self.publish_changes({task_id: data})[task_id]


@dataclass(frozen=True)
class Manifest:
    entries: dict[str, StoreEntry]
    retired: dict[str, int]  # removed tasks' last versions

    def encode(self) -> bytes:
        doc = {"tasks": {t: {"version": e.version, "file": e.file} for t, e in sorted(self.entries.items())},
               "retired": dict(sorted(self.retired.items()))}
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> "Manifest":
        """Manifests written before `retired` existed have none."""
        try:
            doc = json.loads(raw)
            entries = {t: StoreEntry(validate_task_id(t), int(e["version"]), str(e["file"])) for t, e in doc["tasks"].items()}
            retired = {validate_task_id(t): int(v) for t, v in doc.get("retired", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise StoreError(f"store manifest {where} is unreadable: {exc}") from exc
        return cls(entries, retired)

    def plan(self, files: dict[str, bytes], holds: Callable[[StoreEntry, bytes], bool],
             file_name: Callable[[str, int, bytes], str]) -> dict[str, Change]:
        """Each file's change: the live entry again where it `holds` the same bytes, else the next version."""
        changes = {}
        for task_id, data in files.items():
            validate_task_id(task_id)
            previous = self.entries.get(task_id)
            if previous is not None and holds(previous, data):
                changes[task_id] = previous, previous
                continue
            version = max(previous.version if previous else 0, self.retired.get(task_id, 0)) + 1
            changes[task_id] = previous, StoreEntry(task_id, version, file_name(task_id, version, data))
        return changes

    def with_changes(self, changes: dict[str, Change]) -> "Manifest | None":
        """The manifest that commits `changes`; None where nothing changed."""
        new = {task_id: entry for task_id, (previous, entry) in changes.items() if previous != entry}
        if not new:
            return None
        return Manifest({**self.entries, **new}, {t: v for t, v in self.retired.items() if t not in new})

    def without(self, task_id: str) -> "Manifest":
        previous = self.entries[task_id]
        return Manifest({t: e for t, e in self.entries.items() if t != task_id},
                        {**self.retired, task_id: previous.version})


EMPTY = Manifest({}, {})


def replaced(changes: dict[str, Change]) -> list[StoreEntry]:
    """The entries a committed change made unreachable: their files can go."""
    return [previous for previous, entry in changes.values() if previous is not None and previous != entry]


def newest_files(names: Iterable[str]) -> dict[str, StoreEntry]:
    """The newest version of each task among file names relative to the store root: a lost manifest's rebuild."""
    newest: dict[str, StoreEntry] = {}
    for name in names:
        match = VERSION_FILE.fullmatch(name)
        if match is None or not _is_task_id(match.group(1)):
            continue
        entry = StoreEntry(match.group(1), int(match.group(2)), name)
        if entry.task_id not in newest or entry.version > newest[entry.task_id].version:
            newest[entry.task_id] = entry
    return newest


def _is_task_id(name: str) -> bool:
    try:
        validate_task_id(name)
    except ValueError:
        return False
    return True
