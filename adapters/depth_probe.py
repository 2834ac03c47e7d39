"""`mosaserve probe`: what the frozen backbone's tokens at each depth carry for a task, against its pixels.

A logistic regression on each depth's patch tokens (after the patch embedding, then after every block;
each token LayerNorm-ed without affine, as the token head reads them; C = 0.05) and on the raw pixels
(C = 1, the pixel baseline's), scored by stratified 5-fold cross-validation repeated over fresh draws
of the folds inside the task's training images: on a hundred images one draw of folds moves a score
by several points, more than the depths differ. It says which depth a head should read (`--head`);
the test images of `mosaserve results` are never used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbone import BackboneSpec, load_backbone
from .datasets import load_dataset
from .image_dataset import ImageDataset
from .pixel_baseline import PIXEL_C, pixel_features
from .preprocess import Preprocessor
from .quality import split_for_results

TOKEN_C = 0.05
FOLDS = 5


@dataclass(frozen=True)
class ProbeRow:
    features: str
    per_repeat: tuple[float, ...]  # accuracy of each repeat (the mean over its folds)

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_repeat))

    @property
    def sd(self) -> float:
        return float(np.std(self.per_repeat))


def parse_depth_sets(text: str, depth: int) -> list[tuple[int, ...]]:
    """"2+6,3+6" -> [(2, 6), (3, 6)]: depths read side by side (0: the patch embedding, depth: the final)."""
    sets = []
    for item in filter(None, text.split(",")):
        try:
            chosen = tuple(int(part) for part in item.split("+"))
        except ValueError:
            raise ValueError(f"a depth set is depths joined by +, e.g. 2+{depth}; got {item!r}") from None
        if not all(0 <= d <= depth for d in chosen):
            raise ValueError(f"depths run from 0 (the patch embedding) to {depth} (the final block); got {item!r}")
        sets.append(chosen)
    return sets


@torch.inference_mode()
def tokens_by_depth(backbone, prep: Preprocessor, images: torch.Tensor, batch_size: int = 256) -> list[np.ndarray]:
    """For each depth 0..D: every image's LayerNorm-ed patch tokens, flattened, (N, patches * dim)."""
    seen: list[torch.Tensor] = []
    hooked = [backbone.norm_pre, *backbone.blocks]
    handles = [module.register_forward_hook(lambda m, args, out: seen.append(out)) for module in hooked]
    chunks: list[list[torch.Tensor]] = [[] for _ in hooked]
    try:
        for start in range(0, len(images), batch_size):
            seen.clear()
            backbone.forward_features(prep(images[start : start + batch_size]))
            for chunk, out in zip(chunks, seen):
                patches = out[:, backbone.num_prefix_tokens :]
                chunk.append(F.layer_norm(patches, patches.shape[-1:]).flatten(1))
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(chunk).numpy() for chunk in chunks]


def repeated_cv(features: np.ndarray, labels: np.ndarray, c: float, repeats: int, seed: int = 0) -> tuple[float, ...]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import RepeatedStratifiedKFold

    folds = RepeatedStratifiedKFold(n_splits=FOLDS, n_repeats=repeats, random_state=seed).split(features, labels)
    scores = [(LogisticRegression(C=c, max_iter=3000).fit(features[train], labels[train])
               .predict(features[held]) == labels[held]).mean() for train, held in folds]
    return tuple(float(s) for s in np.reshape(scores, (repeats, FOLDS)).mean(axis=1))


def probe(train: ImageDataset, backbone, prep: Preprocessor, depth_sets: list[tuple[int, ...]], repeats: int,
          on_row=None) -> list[ProbeRow]:
    labels = train.labels.numpy()
    pixels = pixel_features(train)
    by_depth = tokens_by_depth(backbone, prep, train.images)
    jobs = [("raw pixels", pixels, PIXEL_C)] + [
        (" + ".join(_depth_name(d, len(by_depth) - 1) for d in chosen),
         np.concatenate([by_depth[d] for d in chosen], axis=1), TOKEN_C) for chosen in depth_sets]
    rows = []
    for name, features, c in jobs:
        rows.append(ProbeRow(name, repeated_cv(features, labels, c, repeats)))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def _depth_name(d: int, depth: int) -> str:
    return "patch embedding" if d == 0 else f"block {d} of {depth}"


def run_probe(task: str, size: int, spec: BackboneSpec, repeats: int, depth_sets: str | None, split: int,
              test_size: int, out: Path, on_row=None) -> dict:
    """The training images `mosaserve results` uses for `task` at `size` on `split`, probed at each depth."""
    backbone, info = load_backbone(spec)
    data = load_dataset(task, info.input_size[-1])
    order, held_out = split_for_results(data, split, test_size)
    train = data.subset(order[: min(size, len(data) - held_out)])
    depth = len(backbone.blocks)
    sets = parse_depth_sets(depth_sets, depth) if depth_sets else [(d,) for d in range(depth + 1)]
    rows = probe(train, backbone, Preprocessor(info), sets, repeats, on_row)
    report = {"meta": {"task": task, "train_images": len(train), "split": split, "repeats": repeats, "folds": FOLDS,
                       "token_c": TOKEN_C, "pixel_c": PIXEL_C, "backbone": info.name, "fingerprint": info.fingerprint},
              "rows": [{"features": r.features, "accuracy": r.mean, "sd": r.sd, "per_repeat": list(r.per_repeat)}
                       for r in rows]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    return report


def format_probe(report: dict) -> str:
    meta = report["meta"]
    lines = [f"{meta['task']}, {meta['train_images']} training images, {meta['repeats']} x {meta['folds']}-fold "
             "cross-validation, % (mean ± sd over repeats)", "", "| features | accuracy % |", "| --- | ---: |"]
    lines += [f"| {row['features']} | {100 * row['accuracy']:.1f} ± {100 * row['sd']:.1f} |" for row in report["rows"]]
    return "\n".join(lines)
