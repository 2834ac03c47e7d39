"""The adapter store in an S3 bucket, against a real S3-compatible server on loopback (moto's).

Each store object below stands for one machine: its own local cache, no file shared with the others.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import threading

import pytest
import s3fs
import torch

from mosaserve.runtime.errors import StoreError
from mosaserve.runtime.object_store import ObjectAdapterStore
from mosaserve.runtime.store import open_store
from mosaserve.runtime.task_ids import BACKBONE_TASK
from mosaserve.runtime.task_runtime import RuntimeConfig, TaskRuntime

from .helpers import POWER_CUT, adapter_bytes, random_model


def machine(url: str, tmp_path, name: str) -> ObjectAdapterStore:
    store = open_store(url, str(tmp_path / f"cache-{name}"))
    assert isinstance(store, ObjectAdapterStore)
    return store


def objects(url: str) -> list[str]:
    prefix = url.removeprefix("s3://") + "/"
    return sorted(k.removeprefix(prefix) for k in s3fs.S3FileSystem(skip_instance_cache=True).find(url))


def test_versions_count_up_across_machines_and_the_live_bytes_again_change_nothing(s3_bucket, tmp_path):
    url = s3_bucket + "/adapters"
    one, two = machine(url, tmp_path, "one"), machine(url, tmp_path, "two")
    first = one.publish("cats", b"one")
    assert first.version == 1 and one.publish("cats", b"one") == first  # a retried upload
    assert two.entries() == {"cats": first} and two.path_of(first).read_bytes() == b"one"
    second = two.publish("cats", b"two")
    assert second.version == 2 and one.entries()["cats"] == second and one.path_of(second).read_bytes() == b"two"
    assert one.remove("cats") == second and two.entries() == {}
    assert two.publish("cats", b"one").version == 3  # never a version it had before, even the same bytes
    assert [n for n in objects(url) if n.startswith("tasks/")] == [one.entries()["cats"].file]


def test_the_publisher_serves_its_own_upload_without_fetching_it_back(s3_bucket, tmp_path):
    url = s3_bucket + "/own"
    store = machine(url, tmp_path, "one")
    entry = store.publish("cats", b"mine")
    s3fs.S3FileSystem(skip_instance_cache=True).rm(f"{url}/{entry.file}")  # a download would fail now
    assert store.path_of(entry).read_bytes() == b"mine"


def test_writers_on_two_machines_racing_lose_no_publish(s3_bucket, tmp_path):
    url = s3_bucket + "/race"
    stores = [machine(url, tmp_path, str(i)) for i in range(2)]

    def publish_many(i):
        for k in range(8):
            stores[i].publish(f"m{i}-t{k}", f"{i}-{k}".encode())
            stores[i].publish("shared", f"{i}-{k}".encode())

    threads = [threading.Thread(target=publish_many, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    entries = machine(url, tmp_path, "reader").entries()
    assert set(entries) == {"shared"} | {f"m{i}-t{k}" for i in range(2) for k in range(8)}
    assert entries["shared"].version == 16  # every publish got its own version: none overwrote another's


def test_a_file_damaged_in_the_bucket_is_refused_by_its_hash_and_a_restart_serves_the_rest(
        tiny_backbone, tiny_spec, s3_bucket, tmp_path):
    backbone, info = tiny_backbone
    config = RuntimeConfig(backbone=tiny_spec, store_dir=s3_bucket + "/served", store_cache_dir=str(tmp_path / "a"))
    torch.manual_seed(0)
    runtime = TaskRuntime(config)
    for task_id, seed in (("a", 1), ("b", 2), ("a", 3)):
        runtime.register(task_id, adapter_bytes(random_model(copy.deepcopy(backbone), seed=seed), info))
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    before = runtime.infer([image, image, image], ["a", "b", BACKBONE_TASK])
    damaged = runtime.store.entries()["b"]
    runtime.store.fs.pipe_file(f"{config.store_dir.removeprefix('s3://')}/{damaged.file}", b"not what was published")
    torch.manual_seed(0)
    elsewhere = TaskRuntime(RuntimeConfig(**{**config.__dict__, "store_cache_dir": str(tmp_path / "b")}))
    assert {t: r.version for t, r in elsewhere.tasks().items()} == {"a": 2}
    assert [t for t, why in elsewhere.restored.failed] == ["b"] and "hash" in elsewhere.restored.failed[0][1]
    after = elsewhere.infer([image, image], ["a", BACKBONE_TASK])
    for x, y in zip([before[0], before[2]], after):
        assert (x.task_id, x.version) == (y.task_id, y.version)
        torch.testing.assert_close(x.output, y.output)


def test_an_unreadable_manifest_is_rebuilt_from_the_files(s3_bucket, tmp_path):
    url = s3_bucket + "/torn"
    writer = machine(url, tmp_path, "w")
    writer.publish("x", b"x1")
    writer.publish("x", b"x2")
    writer.publish("y", b"y1")
    writer.fs.pipe_file(f"{url.removeprefix('s3://')}/manifests/000000000004.json", b'{"tasks": {"x": {"vers')
    reader = machine(url, tmp_path, "r")
    assert {t: e.version for t, e in reader.entries().items()} == {"x": 2, "y": 1}
    assert writer.publish("z", b"z1").version == 1  # writers go on from the rebuilt generation
    assert "manifests/000000000004.json" in objects(url)  # the unreadable one kept for a person to look at


def test_a_bucket_that_does_not_exist_is_a_clear_error(s3_env, tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store("s3://no-such-bucket-here/adapters", str(tmp_path))


# publish's S3 calls for a's second version: upload the file, create the next manifest generation (the commit
# point), prune an old generation, delete the replaced file. The bulk publish uploads two files first.
CHILD = textwrap.dedent("""
    import os, sys
    from mosaserve.runtime.store import open_store
    url, cache, crash_at, bulk = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "bulk"
    store = open_store(url, cache)
    store.publish("a", b"a-one"); store.publish("b", b"b-one")
    print("acknowledged a1 b1", flush=True)
""") + POWER_CUT + textwrap.dedent("""
    store.fs.pipe_file, store.fs.rm_file = step(store.fs.pipe_file), step(store.fs.rm_file)
    if bulk:
        store.publish_changes({"a": b"a-two", "c": b"c-one"})
    else:
        store.publish("a", b"a-two")
    print("acknowledged", flush=True)
""")


@pytest.mark.parametrize(("bulk", "crash_at"), [(False, k) for k in range(1, 6)] + [(True, k) for k in range(1, 7)])
def test_a_publish_killed_at_any_step_leaves_every_acknowledged_version(s3_bucket, tmp_path, bulk, crash_at):
    url, steps, commit = s3_bucket + "/cut", (5 if bulk else 4), (3 if bulk else 2)
    child = subprocess.run([sys.executable, "-c", CHILD, url, str(tmp_path / "child"), str(crash_at),
                            "bulk" if bulk else "one"], capture_output=True, text=True, timeout=120)
    crashed = crash_at <= steps
    assert child.returncode == (137 if crashed else 0), child.stderr
    assert ("acknowledged\n" in child.stdout) == (not crashed)
    store = machine(url, tmp_path, "restarted")
    entries = store.entries()
    committed = crash_at > commit
    expected = {"a": 2, "b": 1, "c": 1} if committed and bulk else {"a": 2, "b": 1} if committed else {"a": 1, "b": 1}
    assert {t: e.version for t, e in entries.items()} == expected
    assert store.path_of(entries["a"]).read_bytes() == (b"a-two" if committed else b"a-one")
    assert store.path_of(entries["b"]).read_bytes() == b"b-one"
    store.collect_garbage(grace_s=0)
    assert [n for n in objects(url) if n.startswith("tasks/")] == sorted(e.file for e in entries.values())
