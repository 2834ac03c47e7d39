"""The served demo: the demo backbone plus a few tasks trained on real digits, and sample images to send.

Tasks are trained once (about half a minute each on 2 CPU cores) and kept in `out/demo`; later
starts reuse them, unless they were trained on another backbone or with an older kind of head (then
they are trained again).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..adapters.backbone import load_backbone
from ..adapters.config import AdapterConfig
from ..adapters.datasets import load_builtin
from ..adapters.image_dataset import train_test_split
from ..adapters.errors import AdapterFileError
from ..adapters.file_format import load_adapter
from ..adapters.demo import DEMO_BACKBONE, run_demo
from ..adapters.training import TrainConfig
from ..runtime.store import AdapterStore
from .config import ServeConfig

DEMO_TASKS = (("mnist", "mosa", "mnist"), ("mnist", "adapter", "mnist-adapter"), ("digits", "mosa", "digits"))


def prepare_demo(out_dir: Path, epochs: int = 5, progress: bool = True) -> ServeConfig:
    """Trains the missing demo tasks, puts them in the demo store, writes sample images."""
    store = AdapterStore(out_dir / "store")
    fingerprint = load_backbone(DEMO_BACKBONE)[1].fingerprint
    for dataset, method, task_id in DEMO_TASKS:
        entry = store.entries().get(task_id)
        if entry is not None and _fits(store.path_of(entry), fingerprint):
            continue
        file = out_dir / f"{dataset}-{method}.safetensors"
        if not _fits(file, fingerprint):
            print(f"training demo task {task_id!r} ({method} on {dataset}, {epochs} epochs)...", flush=True)
            run_demo(out_dir, (method,), dataset, test_size=500, train_cfg=TrainConfig(epochs=epochs), progress=progress)
        store.publish(task_id, file.read_bytes())
    write_samples(out_dir / "samples")
    return ServeConfig.of(backbone=DEMO_BACKBONE, store_dir=str(out_dir / "store"))


def _fits(path: Path, fingerprint: str) -> bool:
    """Whether `path` is a valid adapter file for the backbone with this fingerprint and today's default head."""
    try:
        return load_adapter(path, fingerprint).header.adapter.head == AdapterConfig().head
    except (OSError, AdapterFileError):
        return False


def write_samples(folder: Path) -> list[Path]:
    """A few held-out MNIST digits as PNG files (not among the demo's training images)."""
    folder.mkdir(parents=True, exist_ok=True)
    _, test = train_test_split(load_builtin("mnist"), 1000, 1000, seed=0)
    paths = []
    for index in range(3):
        label = test.class_names[int(test.labels[index])]
        path = folder / f"mnist-{index}-label{label}.png"
        Image.fromarray(test.images[index, 0].numpy()).save(path)
        paths.append(path)
    return paths
