"""Versions, atomic swaps, residency, and a store that survives restarts and crashes."""

import copy
import json
import os
import threading

import pytest
import torch

from mosaserve.adapters.errors import AdapterFileError, BackboneMismatchError
from mosaserve.runtime.bank import AdapterBank
from mosaserve.runtime.errors import InvalidTaskIdError, NonFiniteOutputError
from mosaserve.runtime.executor import MixedTaskExecutor
from mosaserve.runtime.manifest import Manifest
from mosaserve.runtime.store import AdapterStore
from mosaserve.runtime.task_runtime import RuntimeConfig, TaskRuntime
from mosaserve.runtime.task_ids import BACKBONE_TASK, validate_task_id

from .helpers import adapter_bytes, adapter_file, random_model


def test_swap_is_atomic_per_batch_and_never_fails_in_flight_requests(tiny_backbone):
    backbone, info = tiny_backbone
    versions = [random_model(copy.deepcopy(backbone), seed=s) for s in (1, 2)]
    images = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        expected = [m(images) for m in versions]
    for m in versions:
        m.remove_taps()
    bank = AdapterBank(info)
    files = [adapter_file(m, info) for m in versions]
    bank.register("t", files[0], version=1)
    executor = MixedTaskExecutor(backbone, bank)
    stop, failures, seen = threading.Event(), [], set()

    def swapper():
        v = 0
        while not stop.is_set():
            v += 1
            bank.register("t", files[v % 2], version=v + 1)

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        for _ in range(40):
            results = executor.run(images, ["t"] * 4)
            got = torch.stack([r.output for r in results])
            matches = [i for i, e in enumerate(expected) if torch.allclose(got, e, atol=1e-5)]
            if len(matches) != 1 or len({r.version for r in results}) != 1:
                failures.append(results)  # a mix of layers or of versions
            seen.add(matches[0] if matches else None)
    finally:
        stop.set()
        thread.join()
    assert not failures
    assert seen == {0, 1}  # both versions were served while swapping


def test_residency_is_lru_bounded(tiny_backbone):
    backbone, info = tiny_backbone
    bank = AdapterBank(info, max_resident=2)
    for i in range(4):
        bank.register(f"t{i}", adapter_file(random_model(copy.deepcopy(backbone), seed=i), info), version=1)
    executor = MixedTaskExecutor(backbone, bank)
    for task in ["t0", "t1", "t0", "t2", "t3"]:
        executor.run(torch.randn(1, 3, 16, 16), [task])
    assert bank.resident_count() == 2 and bank.evictions == 2


def test_bank_refuses_adapters_of_other_backbones(tiny_backbone):
    backbone, info = tiny_backbone
    bank = AdapterBank(info)
    other = copy.deepcopy(backbone)
    with torch.no_grad():
        other.blocks[0].mlp.fc1.weight.add_(1e-3)
    from mosaserve.adapters.backbone import describe, BackboneSpec
    other_info = describe(other, BackboneSpec())
    with pytest.raises(BackboneMismatchError):
        bank.register("x", adapter_file(random_model(other, seed=1), other_info), version=1)
    assert not bank.snapshot()
    assert not bank.snapshot()


@pytest.mark.parametrize("claim", [{"num_features": 64}, {"depth": 5}])
def test_bank_refuses_a_header_that_misdescribes_the_backbone_it_names(tiny_backbone, claim):
    """Right fingerprint, shapes made for another architecture: refused now, not failing at inference."""
    from dataclasses import replace

    from mosaserve.adapters.config import AdapterConfig
    from mosaserve.adapters.file_format import AdapterHeader, encode_adapter, expected_shapes, load_adapter

    _, info = tiny_backbone
    header = AdapterHeader(AdapterConfig(method="adapter", r=4), replace(info, **claim), ("a", "b"))
    tensors = {name: torch.zeros(shape) for name, shape in expected_shapes(header).items()}
    adapter = load_adapter(encode_adapter(header, tensors), expected_fingerprint=info.fingerprint)  # the file is sound
    bank = AdapterBank(info)
    with pytest.raises(BackboneMismatchError, match=r"describes a backbone of \d+ blocks x \d+ features, but the"):
        bank.register("x", adapter, version=1)
    assert not bank.snapshot()


def test_bank_refuses_a_kind_without_a_serving_form(tiny_backbone, monkeypatch):
    from mosaserve.adapters.config import AdapterKind
    from mosaserve.runtime.resident import SERVING_FORMS

    backbone, info = tiny_backbone
    adapter = adapter_file(random_model(copy.deepcopy(backbone), seed=5, method="lora"), info)
    monkeypatch.delitem(SERVING_FORMS, AdapterKind.LORA)
    bank = AdapterBank(info)
    with pytest.raises(AdapterFileError, match="adapter kind 'lora' is not servable"):
        bank.register("x", adapter, version=1)
    assert not bank.snapshot()


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "..", ".hidden", "x" * 129, "naïve", BACKBONE_TASK, "a\\b"])
def test_task_ids_are_names_never_paths(bad):
    with pytest.raises(InvalidTaskIdError):
        validate_task_id(bad)


def test_store_publishes_versions_and_survives_reopen(tmp_path):
    store = AdapterStore(tmp_path)
    assert store.publish("cats", b"one").version == 1
    second = store.publish("cats", b"two")
    assert second.version == 2 and store.path_of(second).read_bytes() == b"two"
    reopened = AdapterStore(tmp_path)
    assert reopened.entries() == {"cats": second}
    assert not (tmp_path / "tasks" / "cats" / "v000001.safetensors").exists()  # the old version is gone
    reopened.remove("cats")
    assert AdapterStore(tmp_path).entries() == {}


def test_a_writer_never_rereads_its_own_manifest_but_sees_every_other_writers(tmp_path, monkeypatch):
    reads = []
    real_decode = Manifest.decode
    monkeypatch.setattr(Manifest, "decode", classmethod(lambda cls, raw, where: reads.append(where) or real_decode(raw, where)))
    board, other = AdapterStore(tmp_path), AdapterStore(tmp_path)
    for i in range(5):
        board.publish(f"t{i}", b"x")
    board.remove("t0")
    assert reads == [] and set(board.entries()) == {"t1", "t2", "t3", "t4"}  # a board publishes in O(1) reads
    other.publish("dogs", b"y")  # another process's writer: re-read before writing, as it must
    assert len(reads) == 1 and set(board.entries()) == {"t1", "t2", "t3", "t4", "dogs"} and len(reads) == 2
    board.publish("t1", b"z")
    assert board.entries()["t1"].version == 2 and set(AdapterStore(tmp_path).entries()) == set(board.entries())


def test_a_task_removed_and_registered_again_never_gets_a_version_it_had_before(tmp_path):
    store, replica = AdapterStore(tmp_path), AdapterStore(tmp_path)
    store.publish("cats", b"one")
    store.publish("cats", b"two")
    held = replica.entries()["cats"]  # a replica serving v2, that then misses the removal and the upload
    store.remove("cats")
    again = store.publish("cats", b"three")
    assert again.version == 3 and replica.entries()["cats"] != held  # so it sees a change, and reloads
    store.remove("cats")
    assert AdapterStore(tmp_path).publish("cats", b"four").version == 4  # kept on disk, for the next process too
    assert "cats" not in json.loads((tmp_path / "manifest.json").read_text())["retired"]  # live again


def test_a_writer_sees_another_writers_manifest_even_when_its_inode_size_and_mtime_repeat(tmp_path):
    board, other = AdapterStore(tmp_path), AdapterStore(tmp_path)
    board.publish("cats", b"one")
    manifest, kept = tmp_path / "manifest.json", tmp_path / "kept"
    os.link(manifest, kept)  # the board's manifest's inode, kept alive so it can come back
    before = manifest.stat()
    other.publish("cats", b"two")  # a manifest of the same length: only the version digits change
    newer = manifest.read_bytes()
    assert len(newer) == before.st_size
    # The other writer's manifest in the board's old inode, with its old mtime: as an inode the file
    # system hands out again and a coarse clock would make it.
    with open(kept, "r+b") as handle:
        handle.write(newer)
    os.utime(kept, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(kept, manifest)
    board.publish("dogs", b"three")  # must build on the other writer's manifest, not on its own last one
    entries = AdapterStore(tmp_path).entries()
    assert entries["cats"].version == 2 and entries["dogs"].version == 1


def test_publishing_the_live_versions_bytes_again_changes_nothing(tmp_path):
    store = AdapterStore(tmp_path)
    first = store.publish("cats", b"one")
    manifest = (tmp_path / "manifest.json").stat()
    assert store.publish("cats", b"one") == first  # a retried upload, or a resumed job publishing again
    assert (tmp_path / "manifest.json").stat().st_mtime_ns == manifest.st_mtime_ns
    assert sorted(p.name for p in (tmp_path / "tasks" / "cats").iterdir()) == ["v000001.safetensors"]
    assert store.publish("cats", b"two").version == 2 and store.publish("cats", b"one").version == 3


def test_crash_between_file_write_and_manifest_keeps_the_acknowledged_version(tmp_path, monkeypatch):
    store = AdapterStore(tmp_path)
    acknowledged = store.publish("cats", b"v1")
    real_replace = os.replace

    def crash_on_manifest(src, dst):
        if str(dst).endswith("manifest.json"):
            raise OSError("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_manifest)
    with pytest.raises(OSError, match="power cut"):
        store.publish("cats", b"v2")
    monkeypatch.undo()
    after_restart = AdapterStore(tmp_path)
    assert after_restart.entries() == {"cats": acknowledged}
    assert after_restart.path_of(acknowledged).read_bytes() == b"v1"
    assert [p.name for p in after_restart.collect_garbage()] == ["v000002.safetensors"]
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written manifest left behind


def test_runtime_restores_every_task_after_restart(tiny_backbone, tiny_spec, tmp_path):
    backbone, info = tiny_backbone
    config = RuntimeConfig(backbone=tiny_spec, store_dir=str(tmp_path))
    torch.manual_seed(0)  # the tiny backbone's seeded weights, as in the fixture
    runtime = TaskRuntime(config)
    models = {t: random_model(copy.deepcopy(backbone), seed=s, classes=c) for t, s, c in (("a", 1, 3), ("b", 2, 5))}
    for task_id, model in models.items():
        runtime.register(task_id, adapter_bytes(model, info))
    runtime.register("a", adapter_bytes(random_model(copy.deepcopy(backbone), seed=3, classes=3), info))  # version 2
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    before = runtime.infer([image, image, image], ["a", "b", BACKBONE_TASK])
    torch.manual_seed(0)
    restarted = TaskRuntime(config)
    assert {t: r.version for t, r in restarted.tasks().items()} == {"a": 2, "b": 1}
    after = restarted.infer([image, image, image], ["a", "b", BACKBONE_TASK])
    for x, y in zip(before, after):
        assert (x.task_id, x.version) == (y.task_id, y.version)
        torch.testing.assert_close(x.output, y.output)


def test_runtime_rejects_bad_uploads_without_storing_them(tiny_spec, tmp_path):
    torch.manual_seed(0)
    runtime = TaskRuntime(RuntimeConfig(backbone=tiny_spec, store_dir=str(tmp_path)))
    with pytest.raises(AdapterFileError):
        runtime.register("a", b"not an adapter at all")
    assert runtime.store.entries() == {} and not runtime.tasks()


def test_a_task_whose_finite_weights_overflow_fails_only_its_own_rows_with_a_clear_error(tiny_backbone, tiny_spec, tmp_path):
    backbone, info = tiny_backbone
    torch.manual_seed(0)
    runtime = TaskRuntime(RuntimeConfig(backbone=tiny_spec, store_dir=str(tmp_path)))
    model = random_model(copy.deepcopy(backbone), seed=5)
    with torch.no_grad():
        model.head.out.weight.fill_(3e38)  # finite, so the file is valid, but the logits overflow to Inf
    runtime.register("huge", adapter_bytes(model, info))
    image = torch.full((3, 20, 20), 128, dtype=torch.uint8)
    runtime.register("sound", adapter_bytes(random_model(copy.deepcopy(backbone), seed=6), info))
    # In one batch with other tasks: only its own rows fail, the batch and the other rows are served.
    huge, bare, sound = runtime.serve_batch([image] * 3, ["huge", BACKBONE_TASK, "sound"], [3] * 3).answers
    assert isinstance(huge, NonFiniteOutputError) and "'huge' v1 produced non-finite outputs" in str(huge)
    assert bare.embedding is not None and sound.version == 1 and len(sound.top) == 3


def test_removed_then_reregistered_task_serves_the_new_weights(tiny_backbone):
    backbone, info = tiny_backbone
    old, new = (random_model(copy.deepcopy(backbone), seed=s) for s in (1, 2))
    images = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        want = new(images)
    old.remove_taps()
    new.remove_taps()
    bank = AdapterBank(info)
    executor = MixedTaskExecutor(backbone, bank)
    bank.register("t", adapter_file(old, info), version=1)
    executor.run(images, ["t", "t"])  # version 1 becomes resident
    bank.remove("t")
    bank.register("t", adapter_file(new, info), version=1)  # the same version number again
    got = torch.stack([r.output for r in executor.run(images, ["t", "t"])])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_batch_in_flight_on_a_replaced_or_removed_version_leaves_nothing_cached(tiny_backbone):
    backbone, info = tiny_backbone
    first, second = (adapter_file(random_model(copy.deepcopy(backbone), seed=s), info) for s in (30, 31))
    bank = AdapterBank(info)
    bank.register("t", first, version=1)
    planned = bank.snapshot()["t"]  # a batch planned here, run after the replacement below
    bank.register("t", second, version=2)
    assert bank.resident(planned).version == 1  # the batch still gets what it planned with
    assert bank.resident_count() == 0 and bank.host_count() == 1  # but only version 2 stays cached
    assert bank.resident(bank.snapshot()["t"]).version == 2 and bank.resident_count() == 1
    bank.remove("t")
    bank.resident(planned)
    assert bank.resident_count() == 0 and bank.host_count() == 0


def test_host_copies_are_read_back_within_the_configured_file_size_limit(tiny_backbone, tmp_path):
    backbone, info = tiny_backbone
    data = adapter_bytes(random_model(copy.deepcopy(backbone), seed=32), info)
    entry = AdapterStore(tmp_path).publish("t", data)
    bank = AdapterBank(info, max_host=1, max_file_bytes=len(data) - 1)
    bank.register("t", adapter_file(random_model(copy.deepcopy(backbone), seed=32), info), entry.version,
                  tmp_path / entry.file)
    bank.register("u", adapter_file(random_model(copy.deepcopy(backbone), seed=33), info), 1, tmp_path / entry.file)
    assert bank.snapshot()["t"].host.tensors is None  # dropped from host memory: a read-back is due
    with pytest.raises(AdapterFileError, match="over the limit of"):
        bank.resident(bank.snapshot()["t"])


def test_a_version_replaced_in_the_store_while_out_of_host_memory_is_caught_up_with_not_failed(
        tiny_backbone, tiny_spec, tmp_path):
    backbone, info = tiny_backbone
    board = AdapterStore(tmp_path)  # another process: the task board
    board.publish("t", adapter_bytes(random_model(copy.deepcopy(backbone), seed=34), info))
    board.publish("u", adapter_bytes(random_model(copy.deepcopy(backbone), seed=35), info))
    runtime = TaskRuntime(RuntimeConfig(backbone=tiny_spec, store_dir=str(tmp_path), max_host=1))
    assert runtime.bank.snapshot()["t"].host.tensors is None  # u was loaded after it: t left host memory
    board.publish("t", adapter_bytes(random_model(copy.deepcopy(backbone), seed=36), info))  # v1's file goes
    image = torch.full((3, 20, 20), 90, dtype=torch.uint8)
    answer = runtime.serve_batch([image, image], ["t", "u"], [3, 3]).answers  # before this process heard of v2
    fresh = TaskRuntime(RuntimeConfig(backbone=tiny_spec, store_dir=str(tmp_path))).serve_batch([image], ["t"], [3])
    assert answer[0].version == 2 and answer[0].top == fresh.answers[0].top and answer[1].version == 1


def test_host_tier_is_lru_bounded_and_reloads_from_the_stored_files(tiny_backbone, tmp_path):
    backbone, info = tiny_backbone
    models = [random_model(copy.deepcopy(backbone), seed=10 + i) for i in range(4)]
    images = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        expected = [m(images) for m in models]
    for m in models:
        m.remove_taps()
    store = AdapterStore(tmp_path)
    bank = AdapterBank(info, max_resident=1, max_host=2)
    for i, m in enumerate(models):
        entry = store.publish(f"t{i}", adapter_bytes(m, info))
        bank.register(f"t{i}", adapter_file(m, info), entry.version, store.path_of(entry))
    pinned = random_model(copy.deepcopy(backbone), seed=20)
    bank.register("pinned", adapter_file(pinned, info), version=1)  # no file: must stay in host memory
    assert bank.host_count() == 2 and bank.host_reloads == 0  # the pinned one counts against the limit too
    executor = MixedTaskExecutor(backbone, bank)
    for _ in range(2):
        for i in range(4):
            got = torch.stack([r.output for r in executor.run(images, [f"t{i}"] * 2)])
            torch.testing.assert_close(got, expected[i], rtol=1e-5, atol=1e-5)
            assert bank.host_count() <= 2
    assert bank.host_reloads >= 7  # round robin over 4 tasks with one free host slot: all but one run reload
    assert bank.snapshot()["pinned"].host.tensors is not None


def test_thousands_of_tasks_in_one_bank_with_a_small_device_tier(tiny_backbone):
    """2,000 registered tasks, 16 on the device: a batch drawing on many of them still runs row by row right."""
    backbone, info = tiny_backbone
    templates = [random_model(copy.deepcopy(backbone), seed=s) for s in range(4)]
    files = [adapter_file(m, info) for m in templates]
    bank = AdapterBank(info, max_resident=16)
    for i in range(2000):
        bank.register(f"task{i:04d}", files[i % 4], version=1)
    assert len(bank.snapshot()) == 2000
    images = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = [templates[i % 4](images[i : i + 1])[0] for i in range(32)]
    for m in templates:
        m.remove_taps()
    ids = [f"task{(i * 61) // 4 * 4 + i % 4:04d}" for i in range(32)]  # 32 distinct tasks, template i % 4
    results = MixedTaskExecutor(backbone, bank).run(images, ids)
    for result, want in zip(results, expected):
        torch.testing.assert_close(result.output, want, rtol=1e-5, atol=1e-5)
    assert bank.resident_count() == 16 and bank.evictions == 16
