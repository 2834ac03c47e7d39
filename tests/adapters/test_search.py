import copy
import math

import torch

from mosaserve.adapters.backbone import load_backbone
from mosaserve.adapters.config import Head
from mosaserve.adapters.datasets import load_builtin
from mosaserve.adapters.file_format import load_adapter
from mosaserve.adapters.image_dataset import train_test_split
from mosaserve.adapters.loading import build_adapted_model
from mosaserve.adapters.preprocess import Preprocessor
from mosaserve.adapters.quality import MethodTrainer, run_quality
from mosaserve.adapters.quality_tables import format_curves, format_search
from mosaserve.adapters.search import SearchCell, SearchGrid, _preference, search_settings, validation_split
from mosaserve.adapters.task_training import train_task
from mosaserve.adapters.training import TrainConfig, accuracy

from ..conftest import TINY_VIT


def test_validation_is_carved_out_of_the_budget_the_same_way_every_time():
    train, _ = train_test_split(load_builtin("digits"), 100, 50, seed=0)
    fit, val = validation_split(train, 0.2)
    again = validation_split(train, 0.2)
    assert (len(fit), len(val)) == (80, 20)
    assert torch.equal(fit.images, again[0].images) and torch.equal(val.labels, again[1].labels)
    # Disjoint and together the whole budget: no validation image is trained on.
    rows = {tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(train.images, train.labels)}
    fit_rows = [tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(fit.images, fit.labels)]
    val_rows = [tuple(x.flatten().tolist()) + (int(y),) for x, y in zip(val.images, val.labels)]
    assert set(fit_rows) | set(val_rows) == rows and len(fit_rows) + len(val_rows) == len(train)
    assert len(validation_split(train.subset(torch.arange(3)), 0.2)[1]) == 1


def test_ties_go_to_the_shorter_schedule_then_the_lr_nearest_the_default():
    cell = lambda lr, scale, acc: SearchCell(lr, scale, 10 * scale, acc, ())
    cells = [cell(2.5e-3, 1, 0.9), cell(5e-3, 1, 0.9), cell(1e-2, 1, 0.8), cell(5e-3, 2, 0.9)]
    assert max(cells, key=lambda c: _preference(c, 5e-3)) == cells[1]
    assert max(cells + [cell(1e-2, 2, 0.95)], key=lambda c: _preference(c, 5e-3)).lr == 1e-2


def test_recording_a_curve_does_not_change_what_is_trained():
    torch.manual_seed(0)
    backbone, info = load_backbone(TINY_VIT)
    train, test = train_test_split(load_builtin("digits"), 60, 30, seed=0)
    cfg = TrainConfig(epochs=3, batch_size=16, seed=1)
    plain = train_task(backbone, info, train, test, "mosa", cfg, r=4)
    watched = train_task(backbone, info, train, test, "mosa", cfg, r=4, watch={"train": train, "test": test})
    assert watched.file_bytes == plain.file_bytes and plain.curve == ()
    assert [p["epoch"] for p in watched.curve] == [1, 2, 3]
    assert all(0 <= p["train_accuracy"] <= 1 and 0 <= p["test_accuracy"] <= 1 and p["loss"] > 0 for p in watched.curve)
    assert [p["loss"] for p in watched.curve] == [round(loss, 5) for loss in watched.epoch_losses]


def test_a_task_trained_with_the_middle_block_head_says_so_in_its_file_and_serves_what_it_tested():
    backbone, info = load_backbone(TINY_VIT)
    train, test = train_test_split(load_builtin("digits"), 60, 30, seed=0)
    trained = train_task(backbone, info, train, test, "adapter", TrainConfig(epochs=2, batch_size=16), r=4,
                         head="tokens_mid")
    loaded = load_adapter(trained.file_bytes, info.fingerprint)
    assert loaded.header.adapter.head is Head.TOKENS_MID and "head.norm_mid.weight" in loaded.tensors
    model = build_adapted_model(copy.deepcopy(backbone), info, loaded)
    assert accuracy(model, Preprocessor(info)(test.images), test.labels) == trained.test_accuracy


def test_the_search_tries_every_lr_then_longer_schedules_at_the_best_and_keeps_the_best_on_validation():
    torch.manual_seed(0)
    backbone, info = load_backbone(TINY_VIT)
    train, _ = train_test_split(load_builtin("digits"), 50, 10, seed=0)
    grid = SearchGrid(lrs=(1e-3, 3e-2), epoch_scales=(1, 2))
    seen = []
    outcome = search_settings(MethodTrainer(backbone, info, "adapter", 4), train, grid,
                              TrainConfig(epochs=2, batch_size=16), on_cell=seen.append)
    assert (outcome.train_images, outcome.val_images) == (40, 10) and list(outcome.cells) == seen
    assert [(c.lr, c.epoch_scale, c.epochs) for c in seen[:2]] == [(1e-3, 1, 2), (3e-2, 1, 2)]
    best_lr = max(seen[:2], key=lambda c: _preference(c, 5e-3)).lr
    assert (seen[2].lr, seen[2].epoch_scale, seen[2].epochs) == (best_lr, 2, 4)
    best = max(seen, key=lambda c: _preference(c, 5e-3))
    assert (outcome.lr, outcome.epoch_scale) == (best.lr, best.epoch_scale)
    assert all(c.curve[-1]["epoch"] == c.epochs and abs(c.curve[-1]["val_accuracy"] - c.val_accuracy) <= 0.1 for c in seen)
    # The chosen multiple applies to the whole budget's own default schedule.
    chosen = outcome.config_for(TrainConfig(epochs=None, seed=2), 100)
    assert chosen.epochs == outcome.epoch_scale * TrainConfig().epochs_for(100)


def test_results_with_a_search_train_every_seed_with_the_settings_chosen_on_validation(tmp_path):
    grid = SearchGrid(lrs=(1e-3, 1e-2), epoch_scales=(1, 2))
    report = run_quality(("digits",), (30,), ("adapter",), (0, 1), epochs=1, test_size=20, out=tmp_path / "q.json",
                         spec=TINY_VIT, r=4, grid=grid)
    (entry,) = report["search"]
    assert (entry["task"], entry["method"], entry["train_images"], entry["val_images"]) == ("digits", "adapter", 24, 6)
    assert len(entry["cells"]) == 3 and list(report["meta"]["grid"]["lrs"]) == [1e-3, 1e-2]
    runs = [r for r in report["rows"] if r["method"] == "adapter"]
    assert [r["seed"] for r in runs] == [0, 1]
    assert all((r["lr"], r["epochs"]) == (entry["lr"], entry["epoch_scale"]) for r in runs)
    assert all(len(r["curve"]) == r["epochs"] for r in runs)
    search_table = format_search(report["search"])
    assert "| digits | 24 / 6 | adapter |" in search_table and f"lr {entry['lr']:g}, {entry['epoch_scale']}x |" in search_table
    curves = format_curves(report["rows"])
    assert f"| digits | 30 | adapter | {runs[0]['epochs']} |" in curves and "pixel" not in curves
    assert math.isclose(float(curves.splitlines()[-1].split("|")[-2].split("/")[1]),
                        100 * sum(r["curve"][-1]["test_accuracy"] for r in runs) / 2, abs_tol=0.051)
