"""Many adapter files in one upload: the archive read safely, every file validated before any is published."""

from __future__ import annotations

import copy
import gzip
import io
import tarfile

import pytest

from mosaserve.adapters.errors import AdapterFileError
from mosaserve.deploy.http.bulk_upload import adapter_files
from mosaserve.deploy.http.errors import BadRequest, EmptyUpload, TooLarge
from mosaserve.runtime.errors import InvalidTaskIdError
from mosaserve.runtime.publishing import publish_adapters
from mosaserve.runtime.store import AdapterStore

from ..runtime.helpers import adapter_bytes, random_model


def archive(*members: tuple[str, bytes], kind: bytes = tarfile.REGTYPE) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            if kind == tarfile.SYMTYPE:
                info.size, info.linkname = 0, "/etc/passwd"
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


def test_an_archive_of_adapter_files_is_read_by_task_id():
    body = archive(("./a.safetensors", b"one"), ("b-2.safetensors", b"two"))
    assert adapter_files(body, max_file_bytes=10) == {"a": b"one", "b-2": b"two"}


@pytest.mark.parametrize("body, error, says", [
    (b"", EmptyUpload, "empty body"),
    (archive(), EmptyUpload, "no <task_id>.safetensors"),
    (b"not a tar at all" * 100, BadRequest, "not an uncompressed tar"),
    (gzip.compress(archive(("a.safetensors", b"x"))), BadRequest, "not an uncompressed tar"),
    (archive(("dir/a.safetensors", b"x")), BadRequest, "'dir/a.safetensors': only"),
    (archive(("a.bin", b"x")), BadRequest, "'a.bin'"),
    (archive(("a.safetensors", b"")), None, None),  # an empty file is the validator's to refuse
    (archive(("link.safetensors", b""), kind=tarfile.SYMTYPE), BadRequest, "'link.safetensors'"),
    (archive(("a.safetensors", b"x"), ("./a.safetensors", b"y")), BadRequest, "appears twice"),
    (archive(("..safetensors", b"x")), InvalidTaskIdError, "invalid task id"),
    (archive(("big.safetensors", b"x" * 11)), TooLarge, "11 bytes; the limit is 10"),
])
def test_anything_but_flat_adapter_files_is_refused_naming_the_member(body, error, says):
    if error is None:
        assert adapter_files(body, max_file_bytes=10) == {"a": b""}
        return
    with pytest.raises(error, match=says):
        adapter_files(body, max_file_bytes=10)


def test_one_bad_file_among_many_publishes_none_and_is_named(tiny_backbone, tmp_path):
    backbone, info = tiny_backbone
    good = {f"t{i}": adapter_bytes(random_model(copy.deepcopy(backbone), seed=i), info) for i in range(3)}
    store = AdapterStore(tmp_path)
    with pytest.raises(AdapterFileError, match="task 'broken': "):
        publish_adapters(store, info, {**good, "broken": good["t0"][:-50]})
    assert store.entries() == {} and not any((tmp_path / "tasks").iterdir())

    first = publish_adapters(store, info, good)
    assert [(p.entry.version, p.created, p.changed) for p in first.values()] == [(1, True, True)] * 3
    again = publish_adapters(store, info, {**good, "t1": good["t2"]})  # one replaced, two the same bytes
    assert {t: (p.entry.version, p.changed) for t, p in again.items()} == {"t0": (1, False), "t1": (2, True),
                                                                           "t2": (1, False)}
