"""Property tests of what the HTTP layer validates: task ids in paths, request bodies, training requests.

Each validator either accepts its input as documented or raises its own error with a 4xx, so no
client input reaches the server as an unexpected exception (a 500).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mosaserve.deploy.http.errors import status_of
from mosaserve.deploy.http.requests import images_from_body, read_limited
from mosaserve.deploy.training.jobs import TrainRequest, parse_train_request, resolve_dataset
from mosaserve.runtime.errors import InvalidTaskIdError
from mosaserve.runtime.task_ids import validate_task_id

QUICK = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
DOCUMENTED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # the pattern the error message states
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=15,
)
ID_LIKE = st.text(alphabet=st.sampled_from("aZ09_.-/\\\0:~ é\u200b%"), max_size=140) | st.text(max_size=140)


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("datasets")
    (root / "shapes").mkdir()
    return root


@QUICK
@given(ID_LIKE | st.from_regex(DOCUMENTED_ID, fullmatch=True))
def test_accepted_task_ids_are_plain_names_and_never_paths(task_id):
    try:
        validate_task_id(task_id)
    except InvalidTaskIdError:
        return
    assert DOCUMENTED_ID.fullmatch(task_id) and ".." not in task_id
    assert not {"/", "\\", "\0"} & set(task_id)
    root = Path("/srv/store/tasks")
    assert (root / task_id).resolve().parent == root  # one component, inside the store's folder


@QUICK
@given(st.none() | st.integers() | st.binary() | st.lists(st.text()) | st.dictionaries(st.text(), st.text()))
def test_task_ids_that_are_not_strings_are_refused(task_id):
    with pytest.raises(InvalidTaskIdError):
        validate_task_id(task_id)


async def _chunks(parts: list[bytes]):
    for part in parts:
        yield part


@QUICK
@given(st.lists(st.binary(max_size=64), max_size=8), st.none() | st.text(max_size=12), st.integers(1, 256))
@example([b"abcde"], "\u00b2", 4)  # isdigit() but not int(): once a 500
def test_bodies_are_read_whole_or_refused_with_413(parts, declared, limit):
    try:
        body = asyncio.run(read_limited(_chunks(parts), declared, limit, "body"))
    except Exception as exc:  # noqa: BLE001 - refused: its status is what the client sees
        assert status_of(exc) == 413
        announced = declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit
        assert sum(map(len, parts)) > limit or announced
        return
    assert body == b"".join(parts) and len(body) <= limit


@QUICK
@given(st.binary(max_size=512) | JSON_VALUES.map(lambda v: json.dumps(v).encode()),
       st.sampled_from(["application/json", "application/json; charset=utf-8", "image/png", "", "text/plain"]),
       st.integers(1, 8))
@example(b"[" * 100_000, "application/json", 4)  # deeper than the parser recurses: once a 500
def test_image_bodies_give_images_or_a_4xx(body, content_type, max_images):
    try:
        images = images_from_body(body, content_type, max_images)
    except Exception as exc:  # noqa: BLE001 - refused: its status is what the client sees
        assert 400 <= status_of(exc) < 500
        return
    assert 1 <= len(images) <= max_images and all(isinstance(i, bytes) for i in images)


@QUICK
@given(st.lists(st.binary(max_size=32), min_size=1, max_size=6), st.integers(1, 8))
def test_base64_image_lists_decode_to_their_bytes_or_413(images, max_images):
    body = json.dumps({"images": [base64.b64encode(i).decode() for i in images]}).encode()
    try:
        assert images_from_body(body, "application/json", max_images) == images
    except Exception as exc:  # noqa: BLE001 - refused: its status is what the client sees
        assert status_of(exc) == 413 and len(images) > max_images


TRAIN_FIELDS = st.fixed_dictionaries(
    {"task_id": st.text(max_size=20) | st.from_regex(DOCUMENTED_ID, fullmatch=True), "dataset": st.text(max_size=30)
     | st.sampled_from(["digits", "mnist", "folder:shapes", "folder:../x", "list:/etc/passwd", "folder:a\0b"])},
    optional={"method": JSON_VALUES, "head": JSON_VALUES | st.sampled_from(["tokens", "tokens_mid"]), "epochs": JSON_VALUES, "train_size": JSON_VALUES, "test_size": JSON_VALUES,
              "lr": JSON_VALUES, "seed": JSON_VALUES, "extra": JSON_VALUES},
)


@QUICK
@given(JSON_VALUES | TRAIN_FIELDS)
@example({"task_id": "t", "dataset": "folder:a\0b"})  # a NUL in a path: once a 500
def test_training_requests_parse_or_are_refused_with_400(datasets_root, doc):
    try:
        request = parse_train_request(doc, str(datasets_root))
    except Exception as exc:  # noqa: BLE001 - refused: its status is what the client sees
        assert status_of(exc) == 400
        return
    assert isinstance(request, TrainRequest) and validate_task_id(request.task_id)
    assert 0 < request.lr <= 1 and (request.epochs is None or 1 <= request.epochs <= 1000)
    assert request.epochs is None or "epochs" in doc  # left out, it is the default schedule
    assert request.head in (None, "tokens", "tokens_mid", "pooled")


@QUICK
@given(st.text(max_size=60) | st.sampled_from(["../x", "a/../../x", "/etc", "shapes/../..", "shapes//x", "."]),
       st.sampled_from(["folder", "list"]))
def test_file_datasets_resolve_inside_the_datasets_root_or_are_refused(datasets_root, relative, kind):
    try:
        resolved = resolve_dataset(f"{kind}:{relative}", str(datasets_root))
    except ValueError:  # TrainRequestError, or a path the OS refuses
        return
    path = Path(resolved.partition(":")[2])
    assert path.is_relative_to(datasets_root.resolve())
