"""What a load test sends: an image, the task ids it draws from, adapter files to upload."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

from ..client import Client
from .mixes import BACKBONE_TASK


def noise_png(size: int = 32, seed: int = 0) -> bytes:
    """A random RGB PNG: the service resizes it, so its size only sets the decode cost."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def registered_tasks(url: str, timeout_s: float = 30.0) -> list[str]:
    """The task ids the service serves now (GET /v1/tasks), without the bare backbone."""
    tasks = Client(url, timeout_s=timeout_s).tasks()
    return sorted(t["task_id"] for t in tasks if t["task_id"] != BACKBONE_TASK)


def adapter_files(folder: Path) -> list[bytes]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors adapter files in {folder}")
    return [f.read_bytes() for f in files]
