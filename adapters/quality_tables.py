"""The markdown tables of RESULTS.md from a `mosaserve results` report."""

from __future__ import annotations

import statistics

from .paired import discordant, mcnemar_p
from .quality import METHOD_ORDER, PIXELS


def format_quality(rows: list[dict]) -> str:
    lines = ["| task | train images | method | r | lr, epochs | trainable params | test accuracy % (mean ± sd over seeds and splits) "
             "| train s (mean) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for task, size, method, runs in _groups(rows):
        accs = [r["test_accuracy"] * 100 for r in runs]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        r = "-" if method in ("linear", PIXELS) else runs[0].get("r", "-")
        lines.append(f"| {task} | {size} | {method} | {r} | {_settings(runs[0])} | {runs[0]['trainable_params']:,} | "
                     f"{statistics.mean(accs):.1f} ± {spread:.1f} (n={len(accs)}) | "
                     f"{statistics.mean(r['train_seconds'] for r in runs):.1f} |")
    return "\n".join(lines)


def format_against_pixels(rows: list[dict]) -> str:
    """Each method against the pixel baseline on the same test images: the images only one of them gets
    right (mean over runs) and the exact McNemar p of each run, as the range over runs."""
    lines = ["| task | train images | method | right only here (mean) | right only with pixels (mean) "
             "| McNemar p (range over runs) |",
             "| --- | ---: | --- | ---: | ---: | ---: |"]
    for task, size, method, runs in _groups([r for r in rows if r["method"] != PIXELS and r.get("test_hits")]):
        counts = [discordant(run["test_hits"], _pixels_of(rows, run)["test_hits"]) for run in runs]
        lines.append(f"| {task} | {size} | {method} | {statistics.mean(c[0] for c in counts):.1f} | "
                     f"{statistics.mean(c[1] for c in counts):.1f} | {_range(mcnemar_p(*c) for c in counts)} |")
    return "\n".join(lines)


def _range(values) -> str:
    values = list(values)
    low, high = min(values), max(values)
    return f"{low:.2g}" if low == high else f"{low:.2g}-{high:.2g}"


def _pixels_of(rows: list[dict], run: dict) -> dict:
    """The pixel baseline's row on the run's own training and test images."""
    return next(r for r in rows if r["method"] == PIXELS and
                (r["task"], r["train_images"], r.get("split")) == (run["task"], run["train_images"], run.get("split")))


def format_search(search: list[dict]) -> str:
    """Validation accuracy of every searched cell, in the order they ran, and the settings chosen."""
    if not search:
        return ""
    width = max(len(entry["cells"]) for entry in search)
    lines = ["| task | train / val images | method | " + " | ".join(f"cell {i + 1}" for i in range(width)) + " | chosen |",
             "| --- | ---: | --- |" + " ---: |" * width + " ---: |"]
    for entry in search:
        cells = [f"{c['lr']:g} x {c['epochs']}: {c['val_accuracy'] * 100:.1f}" for c in entry["cells"]]
        cells += [""] * (width - len(cells))
        lines.append(f"| {entry['task']} | {entry['train_images']} / {entry['val_images']} | {entry['method']} | "
                     + " | ".join(cells) + f" | lr {entry['lr']:g}, {entry['epoch_scale']}x |")
    return "\n".join(lines)


def format_curves(rows: list[dict], fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)) -> str:
    """Train / test accuracy at fractions of each run (mean over seeds): under- or overfitting at a glance."""
    head = " | ".join(f"{round(f * 100)}% of the run" for f in fractions)
    lines = [f"| task | train images | method | epochs | train / test accuracy %: {head} |",
             "| --- | ---: | --- | ---: |" + " ---: |" * len(fractions)]
    for task, size, method, runs in _groups([r for r in rows if r.get("curve")]):
        points = [[_nearest(r["curve"], f * r["epochs"]) for r in runs] for f in fractions]
        cells = [f"{_mean(p, 'train_accuracy'):.1f} / {_mean(p, 'test_accuracy'):.1f}" for p in points]
        lines.append(f"| {task} | {size} | {method} | {runs[0]['epochs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _groups(rows: list[dict]):
    keys = sorted({(r["task"], r["train_images"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    for task, size in keys:
        for method in METHOD_ORDER:
            runs = [r for r in rows if (r["task"], r["train_images"], r["method"]) == (task, size, method)]
            if runs:
                yield task, size, method, runs


def _settings(row: dict) -> str:
    return "-" if row.get("lr") is None else f"{row['lr']:g}, {row['epochs']}"


def _nearest(curve: list[dict], epoch: float) -> dict:
    return min(curve, key=lambda point: abs(point["epoch"] - epoch))


def _mean(points: list[dict], key: str) -> float:
    return statistics.mean(p[key] for p in points) * 100
