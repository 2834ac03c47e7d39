"""The maths of MoSA: merge = expectation over the expert draw, as documented per share mode."""

import itertools

import pytest
import torch

from mosaserve.adapters.bottleneck import BottleneckAdapter
from mosaserve.adapters.mosa import MoSAAdapter


def trained_like(share: str, dim: int = 12, r: int = 5, k: int = 4) -> MoSAAdapter:
    """A float64 MoSA adapter with every parameter moved away from its init."""
    adapter = MoSAAdapter(dim, r, scale=0.1, dropout=0.0, num_experts=k, share=share,
                          mask_generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return adapter.eval()


def test_merged_output_equals_mean_of_expert_outputs_for_split_up():
    adapter = trained_like("down")
    h = torch.randn(7, 3, 12, dtype=torch.float64)
    expert_outputs = [adapter.expert_forward(h, 0, k) for k in range(4)]
    mean_output = torch.stack(expert_outputs).mean(0)
    merged = adapter.merge()
    torch.testing.assert_close(merged(h), mean_output, rtol=0, atol=1e-12)
    torch.testing.assert_close(adapter(h), mean_output, rtol=0, atol=1e-12)  # eval mode = merged
    assert not torch.allclose(expert_outputs[0], expert_outputs[1])  # the experts really differ


@pytest.mark.parametrize("share", ["none", "up"])
def test_split_down_merges_weights_by_mean_not_outputs(share):
    adapter = trained_like(share)
    merged = adapter.merge()
    downs = torch.stack([adapter.down.expert(k) for k in range(4)])
    ups = torch.stack([adapter.up.expert(k) for k in range(adapter.up.num_experts)])
    torch.testing.assert_close(merged.down.weight, downs.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(merged.up.weight, ups.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(merged.down.bias, adapter.down_bias, rtol=0, atol=0)
    h = torch.randn(9, 12, dtype=torch.float64)
    pairs = itertools.product(range(4), range(adapter.up.num_experts))
    mean_of_outputs = torch.stack([adapter.expert_forward(h, d, u) for d, u in pairs]).mean(0)
    # Documented: the GELU after a split Down makes the merged adapter differ from the mean output.
    assert not torch.allclose(merged(h), mean_of_outputs, atol=1e-6)


@pytest.mark.parametrize("share", ["down", "up", "none"])
def test_mosa_has_exactly_the_standard_adapters_trainable_parameters(share):
    mosa = MoSAAdapter(64, 16, num_experts=4, share=share)
    standard = BottleneckAdapter(64, 16)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(mosa) == count(standard) == 2 * 64 * 16 + 16 + 64 + 2 * 64


def test_merged_adapter_is_a_plain_standard_adapter():
    merged = trained_like("down").merge()
    assert type(merged) is BottleneckAdapter
    assert {n: tuple(p.shape) for n, p in merged.named_parameters()} == {
        n: tuple(p.shape) for n, p in BottleneckAdapter(12, 5).named_parameters()
    }


def test_fresh_mosa_starts_from_the_frozen_model():
    adapter = MoSAAdapter(16, 4).train()
    assert torch.count_nonzero(adapter(torch.randn(3, 16))) == 0  # Up starts at zero


def test_training_draws_cover_every_expert():
    adapter = MoSAAdapter(16, 4, num_experts=4, share="none").train()
    for _ in range(64):
        adapter(torch.randn(2, 16))
    assert adapter.down.active.all() and adapter.up.active.all()
