"""The body of a bulk registration (POST /v1/tasks): a tar archive of `<task_id>.safetensors` files.

The archive is read in memory, never extracted: only regular files directly in it (a leading `./`
is fine) are taken, each within the adapter file limit.
"""

from __future__ import annotations

import io
import tarfile

from ...runtime.task_ids import validate_task_id
from .errors import BadRequest, EmptyUpload, TooLarge

SUFFIX = ".safetensors"
MAX_FILES = 10_000


def adapter_files(archive: bytes, max_file_bytes: int) -> dict[str, bytes]:
    """{task id: file bytes} from an uncompressed tar; anything else in it is refused, naming the member."""
    if not archive:
        raise EmptyUpload("empty body: send a tar archive of <task_id>.safetensors files")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                _take(tar, member, files, max_file_bytes)
    except tarfile.TarError as exc:
        raise BadRequest(f"the body is not an uncompressed tar archive: {exc}") from exc
    if not files:
        raise EmptyUpload("the archive holds no <task_id>.safetensors file")
    return files


def _take(tar: tarfile.TarFile, member: tarfile.TarInfo, files: dict[str, bytes], max_file_bytes: int) -> None:
    name = member.name.removeprefix("./")
    if member.isdir() and name in ("", "."):
        return
    if not member.isfile() or "/" in name or not name.endswith(SUFFIX):
        raise BadRequest(f"archive member {member.name!r}: only <task_id>{SUFFIX} files, not in a folder")
    task_id = validate_task_id(name.removesuffix(SUFFIX))
    if task_id in files:
        raise BadRequest(f"archive member {member.name!r}: task {task_id!r} appears twice")
    if member.size > max_file_bytes:
        raise TooLarge(f"archive member {member.name!r} is {member.size} bytes; the limit is {max_file_bytes}")
    if len(files) == MAX_FILES:
        raise TooLarge(f"more than {MAX_FILES} files in one archive: send several")
    files[task_id] = tar.extractfile(member).read()
