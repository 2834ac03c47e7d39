import json
import math

import pytest
import torch

from mosaserve.adapters.backbone import BackboneSpec, load_backbone
from mosaserve.adapters.config import AdapterConfig
from mosaserve.adapters.datasets import load_builtin
from mosaserve.adapters.image_dataset import train_test_split
from mosaserve.adapters.errors import AdapterConfigError
from mosaserve.adapters.model import AdaptedViT
from mosaserve.adapters.preprocess import Preprocessor
from mosaserve.adapters.training import TrainConfig, accuracy, symmetric_kl, train_adapter, warmup_cosine


def test_warmup_then_cosine_schedule():
    factors = [warmup_cosine(s, total_steps=20, warmup_steps=4) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert math.isclose(warmup_cosine(12, 20, 4), 0.5)


def test_symmetric_kl_is_zero_for_equal_and_symmetric_otherwise():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert symmetric_kl(a, b).item() > 0
    assert symmetric_kl(a, b).item() == pytest.approx(symmetric_kl(b, a).item(), rel=1e-6)
    p, q = a.softmax(-1), b.softmax(-1)
    manual = 0.5 * ((q * (q.log() - p.log())).sum(-1) + (p * (p.log() - q.log())).sum(-1)).mean()
    assert symmetric_kl(a, b).item() == pytest.approx(manual.item(), rel=1e-5)


def test_bad_train_config_is_refused():
    with pytest.raises(AdapterConfigError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(AdapterConfigError, match="method"):
        AdapterConfig(method="prompt")


@pytest.mark.parametrize("method", ["mosa", "adapter"])
def test_training_on_real_digits_learns(method):
    """300 real 8x8 digits on a random frozen ViT: well above chance (10%), read off the merged model."""
    torch.manual_seed(0)
    spec = BackboneSpec("vit_tiny_patch16_224", {"img_size": 8, "patch_size": 2, "depth": 2, "embed_dim": 32, "num_heads": 2,
                                                 "global_pool": "avg"})
    backbone, info = load_backbone(spec)
    train, test = train_test_split(load_builtin("digits"), 300, 300, seed=0)
    prep = Preprocessor(info)
    model = AdaptedViT(backbone, AdapterConfig(method=method, r=8), num_classes=10)
    epochs = []
    result = train_adapter(model, prep(train.images), train.labels, TrainConfig(epochs=24, batch_size=32, lr=0.03),
                           progress=False, on_epoch=lambda e, loss: epochs.append(e))
    assert epochs == list(range(24)) and result.steps == 24 * 10
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    model.merge_()
    assert result.epoch_losses[-1] < 0.9 * result.epoch_losses[0]
    assert accuracy(model, prep(test.images), test.labels) > 0.2


def test_quality_table_runs_every_cell_on_a_fixed_test_set(tmp_path):
    from mosaserve.adapters.quality import run_quality
    from mosaserve.adapters.quality_tables import format_against_pixels, format_quality

    from ..conftest import TINY_VIT

    report = run_quality(("digits",), (40, 10), ("linear", "mosa", "adapter", "lora"), (0, 1), epochs=1, test_size=30,
                         out=tmp_path / "q.json", spec=TINY_VIT, r=8, grid=None)
    rows = report["rows"]
    assert len(rows) == 2 * (4 * 2 + 1) and {r["train_images"] for r in rows} == {40, 10} and report["search"] == []
    params = {r["method"]: r["trainable_params"] for r in rows}
    # The pixel baseline, once per budget on the same images: 8x8 pixels and a bias per class it saw.
    pixel_rows = [r for r in rows if r["method"] == "pixel logistic regression"]
    assert [r["train_images"] for r in pixel_rows] == [40, 10]
    assert all(r["trainable_params"] % 65 == 0 and 0 < r["test_accuracy"] <= 1 for r in pixel_rows)
    assert params["mosa"] == params["adapter"] > params["linear"]  # MoSA and the adapter: equal parameters
    assert abs(params["lora"] - params["adapter"]) / params["adapter"] < 0.15  # LoRA at rank r/2: about as many
    # Without a search every method trains with the defaults; every run records its one-epoch curve.
    trained = [r for r in rows if r["method"] != "pixel logistic regression"]
    assert {(r["lr"], r["epochs"]) for r in trained} == {(5e-3, 1)}
    # The curve's last point reads the model in training as the merged file serves it (a test image at most apart).
    assert all([p["epoch"] for p in r["curve"]] == [1] and abs(r["curve"][0]["test_accuracy"] - r["test_accuracy"]) <= 1 / 30
               for r in trained)
    # Each run keeps which test image it got right: what the paired comparison with the pixels reads.
    assert all(len(r["test_hits"]) == 30 and r["test_hits"].count("1") == round(r["test_accuracy"] * 30) for r in rows)
    assert format_against_pixels(rows).count("| digits |") == 2 * 4
    table = format_quality(rows)
    assert "| digits | 40 | pixel logistic regression | - | - |" in table and "| digits | 40 | mosa | 8 | 0.005, 1 |" in table
    assert "| digits | 40 | lora | 4 |" in table and "(n=2)" in table
    assert json.loads((tmp_path / "q.json").read_text())["rows"] == rows


def test_several_splits_test_each_method_on_other_images_and_the_table_pools_them(tmp_path):
    from mosaserve.adapters.pixel_baseline import pixel_logistic_regression
    from mosaserve.adapters.quality import run_quality
    from mosaserve.adapters.quality_tables import format_quality

    from ..conftest import TINY_VIT

    report = run_quality(("digits",), (40,), ("linear",), (0,), epochs=1, test_size=30, out=tmp_path / "q.json",
                         spec=TINY_VIT, r=4, grid=None, splits=(0, 7))
    rows = report["rows"]
    assert [(r["method"], r["split"]) for r in rows] == [("pixel logistic regression", 0), ("linear", 0),
                                                       ("pixel logistic regression", 7), ("linear", 7)]
    data = load_builtin("digits")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(7))  # split 7's own test images
    expected = pixel_logistic_regression(data.subset(order[:40]), data.subset(order[-30:])).test_accuracy
    assert rows[2]["test_accuracy"] == expected and report["meta"]["splits"] == [0, 7]
    assert "| digits | 40 | linear | - | 0.005, 1 |" in format_quality(rows) and "(n=2)" in format_quality(rows)


def test_pixel_logistic_regression_is_the_baseline_a_skeptic_would_ask_for():
    """scikit-learn's LogisticRegression(C=1.0) on raw 8x8 digits: well above chance, the same on every call."""
    from mosaserve.adapters.pixel_baseline import pixel_logistic_regression

    train, test = train_test_split(load_builtin("digits"), 1000, 500, seed=0)
    first, again = pixel_logistic_regression(train, test), pixel_logistic_regression(train, test)
    assert 0.93 < first.test_accuracy < 0.99 and first.test_accuracy == again.test_accuracy
    assert first.params == 10 * 64 + 10


def test_the_default_schedule_gives_a_small_dataset_enough_steps_and_keeps_asked_epochs():
    default = TrainConfig()
    assert default.epochs_for(10_000) == 10 and default.epochs_for(1000) == 25  # 16 steps an epoch
    assert default.epochs_for(100) == 200  # 2 steps an epoch: 400 steps
    assert TrainConfig(epochs=3).epochs_for(100) == 3 and TrainConfig(min_steps=0).epochs_for(100) == 10
    with pytest.raises(AdapterConfigError):
        TrainConfig(max_shift=-1)
    for bad in ({"max_rotation": -1.0}, {"max_rotation": 181.0}, {"max_scale": 1.0}, {"max_scale": -0.1}):
        with pytest.raises(AdapterConfigError, match="max_rotation must lie"):
            TrainConfig(**bad)
