"""Power cuts for the store: a publishing process killed at every step, and a torn manifest.

The crash is real: a child process runs the store's own publish and dies (os._exit, no cleanup,
no finally blocks) on entering the k-th file-system step; the parent then opens the store as a
restarted replica would.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from mosaserve.runtime.store import AdapterStore
from mosaserve.runtime.task_runtime import RuntimeConfig, TaskRuntime

from .helpers import POWER_CUT, adapter_bytes, random_model

# publish's steps: fsync file, rename file, fsync dir, fsync manifest, rename manifest, fsync dir,
# delete the replaced version. The manifest's rename (step 5) is the commit point.
STEPS = ("fsync adapter", "rename adapter", "fsync folder", "fsync manifest", "rename manifest", "fsync folder",
         "delete old version")
COMMIT_STEP = 5

CHILD = textwrap.dedent("""
    import os, sys
    from mosaserve.runtime.store import AdapterStore
    root, crash_at = sys.argv[1], int(sys.argv[2])
    store = AdapterStore(root)
    store.publish("a", b"a-one"); store.publish("b", b"b-one")
    print("acknowledged a1 b1", flush=True)
""") + POWER_CUT + textwrap.dedent("""
    os.fsync, os.replace, os.unlink = step(os.fsync), step(os.replace), step(os.unlink)
    store.publish("a", b"a-two")
    print("acknowledged a2", flush=True)
""")


@pytest.mark.parametrize("crash_at", range(1, len(STEPS) + 2), ids=[*STEPS, "no crash"])
def test_a_publish_killed_at_any_step_leaves_every_acknowledged_version(tmp_path, crash_at):
    child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), str(crash_at)], capture_output=True,
                           text=True, timeout=60)
    crashed = crash_at <= len(STEPS)
    assert child.returncode == (137 if crashed else 0), child.stderr
    assert ("acknowledged a2" in child.stdout) == (not crashed)
    store = AdapterStore(tmp_path)  # the restart
    entries = store.entries()
    committed = crash_at > COMMIT_STEP
    assert {t: e.version for t, e in entries.items()} == {"a": 2 if committed else 1, "b": 1}
    assert store.path_of(entries["a"]).read_bytes() == (b"a-two" if committed else b"a-one")
    assert store.path_of(entries["b"]).read_bytes() == b"b-one"
    store.collect_garbage()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "tasks").rglob("*") if p.is_file())
    assert files == sorted(e.file for e in entries.values())  # no stray, no half-written file remains


# A bulk publish of a's next version and a new task c: both files, then one manifest (its rename, step 8,
# commits both), then the replaced version of a is deleted.
BULK_STEPS = 10
BULK_CHILD = CHILD.replace('store.publish("a", b"a-two")', 'store.publish_changes({"a": b"a-two", "c": b"c-one"})')


@pytest.mark.parametrize("crash_at", range(1, BULK_STEPS + 2))
def test_a_bulk_publish_killed_at_any_step_commits_every_task_or_none(tmp_path, crash_at):
    child = subprocess.run([sys.executable, "-c", BULK_CHILD, str(tmp_path), str(crash_at)], capture_output=True,
                           text=True, timeout=60)
    assert child.returncode == (137 if crash_at <= BULK_STEPS else 0), child.stderr
    entries = AdapterStore(tmp_path).entries()
    if crash_at > 8:
        assert {t: e.version for t, e in entries.items()} == {"a": 2, "b": 1, "c": 1}
    else:
        assert {t: e.version for t, e in entries.items()} == {"a": 1, "b": 1}
    assert AdapterStore(tmp_path).path_of(entries["a"]).read_bytes() == (b"a-two" if crash_at > 8 else b"a-one")


def test_a_torn_manifest_is_rebuilt_from_the_files_and_every_task_served_again(tiny_backbone, tiny_spec, tmp_path):
    backbone, info = tiny_backbone
    config = RuntimeConfig(backbone=tiny_spec, store_dir=str(tmp_path))
    torch.manual_seed(0)
    runtime = TaskRuntime(config)
    for task_id, seed in (("a", 1), ("b", 2), ("a", 3), ("gone", 4)):
        runtime.register(task_id, adapter_bytes(random_model(copy.deepcopy(backbone), seed=seed), info))
    runtime.remove("gone")
    acknowledged = {t: r.version for t, r in runtime.tasks().items()}
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[: manifest.stat().st_size // 2])  # torn in the middle
    torch.manual_seed(0)
    restarted = TaskRuntime(config)
    assert {t: r.version for t, r in restarted.tasks().items()} == acknowledged == {"a": 2, "b": 1}
    assert not restarted.restored.failed
    assert len(list(tmp_path.glob("manifest.json.unreadable-*"))) == 1  # kept for a person to look at
    assert AdapterStore(tmp_path).entries() == restarted.store.entries()  # the rebuilt manifest is readable
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    assert [a.version for a in restarted.infer([image, image], ["a", "b"])] == [2, 1]


def test_a_reader_that_meets_a_torn_manifest_recovers_too(tmp_path):
    writer = AdapterStore(tmp_path)
    writer.publish("x", b"x1")
    reader = AdapterStore(tmp_path)
    writer.publish("x", b"x2")
    (tmp_path / "manifest.json").write_text('{"tasks": {"x": {"vers')
    assert {t: e.version for t, e in reader.entries().items()} == {"x": 2}
    assert writer.publish("y", b"y1").version == 1  # writers go on from the rebuilt manifest
    assert set(AdapterStore(tmp_path).entries()) == {"x", "y"}
