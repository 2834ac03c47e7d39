"""Task ids are plain names: letters, digits, '_', '-', '.'; never paths, never reserved."""

from __future__ import annotations

import re

from .errors import InvalidTaskIdError

BACKBONE_TASK = "__backbone__"  # the bare backbone, served for comparison
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def validate_task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not _TASK_ID.fullmatch(task_id) or ".." in task_id:
        raise InvalidTaskIdError(
            f"invalid task id {task_id!r}: use 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return task_id
