"""The serving form of a bottleneck adapter: LayerNorm affine folded into Down, scale and bias into Up."""

import copy

import pytest
import torch
import torch.nn.functional as F

from mosaserve.adapters.bottleneck import LAYER_NORM_EPS
from mosaserve.adapters.config import METHODS, AdapterKind
from mosaserve.runtime.resident import SERVING_FORMS, FoldedBottlenecks, make_resident

from .helpers import random_model


def folded_delta(folded: FoldedBottlenecks, block: int, h: torch.Tensor) -> torch.Tensor:
    """The formula FoldedBottlenecks documents: [GELU(n(h) @ down + down_bias), 1] @ up."""
    normed = F.layer_norm(h, h.shape[-1:], eps=LAYER_NORM_EPS)
    hidden = F.gelu(normed @ folded.down[block] + folded.down_bias[block])
    return F.pad(hidden, (0, 1), value=1.0) @ folded.up[block]


def resident_of(model, depth: int):
    return make_resident("t", 1, model.export_tensors(), model.config, depth, torch.device("cpu"), torch.float32)


def test_folded_adapter_equals_the_trained_one_in_every_block_and_at_any_width(tiny_backbone):
    backbone, _ = tiny_backbone
    model = random_model(copy.deepcopy(backbone), seed=11, r=4)  # random LayerNorm affine, biases, scale
    folded = resident_of(model, len(backbone.blocks)).bottlenecks
    # A residual stream with an offset and a spread, as real ones have, so the folded bias matters.
    h = torch.randn(3, 7, backbone.num_features, generator=torch.Generator().manual_seed(2)) * 4 + 2
    with torch.inference_mode():
        for block in range(len(backbone.blocks)):
            want = model.adapters[str(block)](h)
            assert want.abs().max() > 0.01  # a real change, not a zero adapter passing trivially
            torch.testing.assert_close(folded_delta(folded, block, h), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(folded_delta(folded.widened(9), block, h), want, rtol=1e-5, atol=1e-5)
    assert folded.widened(9).r == 9 and folded.widened(4) is folded


def test_blocks_without_an_adapter_add_exactly_zero(tiny_backbone):
    backbone, _ = tiny_backbone
    model = random_model(copy.deepcopy(backbone), seed=12, target_blocks=(1,))
    folded = resident_of(model, len(backbone.blocks)).bottlenecks
    assert folded.blocks == frozenset({1})
    h = torch.randn(2, 5, backbone.num_features)
    assert torch.equal(folded_delta(folded, 0, h), torch.zeros_like(h))
    assert folded_delta(folded, 1, h).abs().max() > 0


def test_lora_and_head_only_tasks_have_no_bottlenecks(tiny_backbone):
    backbone, _ = tiny_backbone
    for method in ("lora", "linear"):
        resident = resident_of(random_model(copy.deepcopy(backbone), seed=13, method=method), len(backbone.blocks))
        assert resident.bottlenecks is None
        assert bool(resident.qkv) == (method == "lora")


def test_every_adapter_kind_has_a_serving_form():
    assert set(SERVING_FORMS) == set(AdapterKind)


@pytest.mark.parametrize("method", METHODS)
def test_make_resident_builds_each_kind_with_its_registered_form(tiny_backbone, monkeypatch, method):
    backbone, _ = tiny_backbone
    model = random_model(copy.deepcopy(backbone), seed=14, method=method)
    calls = []
    real = SERVING_FORMS[model.config.kind]
    monkeypatch.setitem(SERVING_FORMS, model.config.kind, lambda *args: calls.append(args[2]) or real(*args))
    resident = resident_of(model, len(backbone.blocks))
    assert calls == [model.config.resolve_blocks(len(backbone.blocks))]
    assert (resident.bottlenecks is not None) == (model.config.kind is AdapterKind.BOTTLENECK)
    assert bool(resident.qkv) == (model.config.kind is AdapterKind.LORA)
