"""`mosaserve probe`: the tokens of every depth and the pixels, scored by repeated cross-validation."""

import json

import pytest
import torch
import torch.nn.functional as F

from mosaserve.adapters.depth_probe import parse_depth_sets, probe, tokens_by_depth
from mosaserve.adapters.image_dataset import ImageDataset
from mosaserve.adapters.preprocess import Preprocessor

from ..test_cli import run_cli


def bright_or_dark(n: int = 30) -> ImageDataset:
    """Two classes the pixels alone tell apart: dark noise and bright noise."""
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 60, (n, 1, 16, 16), generator=g, dtype=torch.uint8) + (labels * 190).view(-1, 1, 1, 1).to(torch.uint8)
    return ImageDataset("bright", images, labels, ("dark", "bright"))


def test_depth_sets_read_side_by_side_and_bad_ones_are_refused():
    assert parse_depth_sets("2+6,3,0", 6) == [(2, 6), (3,), (0,)]
    with pytest.raises(ValueError, match="from 0 .* to 6"):
        parse_depth_sets("2+7", 6)
    with pytest.raises(ValueError, match="joined by \\+"):
        parse_depth_sets("two", 6)


def test_each_depth_is_its_layer_normed_patch_tokens(tiny_backbone):
    backbone, info = tiny_backbone
    prep, data = Preprocessor(info), bright_or_dark(6)
    features = tokens_by_depth(backbone, prep, data.images, batch_size=4)  # two batches
    assert len(features) == 1 + len(backbone.blocks) and all(f.shape == (6, 16 * 32) for f in features)
    with torch.inference_mode():
        x = backbone.norm_pre(backbone._pos_embed(backbone.patch_embed(prep(data.images))))
        embedded, final = x, backbone.blocks(x)
    for depth, tokens in ((0, embedded), (len(backbone.blocks), final)):
        patches = tokens[:, backbone.num_prefix_tokens :]
        want = F.layer_norm(patches, patches.shape[-1:]).flatten(1).numpy()
        assert features[depth] == pytest.approx(want, abs=1e-5)


def test_the_probe_scores_every_depth_set_and_the_pixels_the_same_way_each_time(tiny_backbone):
    backbone, info = tiny_backbone
    rows = probe(bright_or_dark(), backbone, Preprocessor(info), [(0,), (3,), (1, 3)], repeats=2)
    assert [r.features for r in rows] == ["raw pixels", "patch embedding", "block 3 of 3", "block 1 of 3 + block 3 of 3"]
    assert rows[0].per_repeat == (1.0, 1.0)  # the pixels separate bright from dark in every fold
    assert all(len(r.per_repeat) == 2 and 0.0 <= r.mean <= 1.0 for r in rows)
    again = probe(bright_or_dark(), backbone, Preprocessor(info), [(0,), (3,), (1, 3)], repeats=2)
    assert again == rows  # the folds are drawn from a fixed seed


def test_probe_command_writes_its_table_and_refuses_a_depth_the_backbone_lacks(tmp_path):
    out = tmp_path / "probe.json"
    done = run_cli("probe", "--task", "digits", "--train-size", "100", "--repeats", "1", "--depths", "6",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["meta"]["train_images"] == 100 and [r["features"] for r in report["rows"]] == ["raw pixels", "block 6 of 6"]
    assert all(row["accuracy"] > 0.8 for row in report["rows"])  # ten digit classes, chance 0.1
    assert "| block 6 of 6 |" in done.stdout
    bad = run_cli("probe", "--task", "digits", "--depths", "7", "--out", str(out))
    assert bad.returncode == 2 and "depths run from 0 (the patch embedding) to 6" in bad.stderr
