"""ExpertAdamW on one tensor reproduces the official K-dense-copies training exactly."""

import pytest
import torch

from mosaserve.adapters.experts import ExpertSplit
from mosaserve.adapters.optim import ExpertAdamW

K, SHAPE = 4, (6, 5)


def draws(steps: int) -> list[int]:
    return torch.randint(K, (steps,), generator=torch.Generator().manual_seed(11)).tolist()


def loss_of(weight: torch.Tensor, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, SHAPE[1], generator=g, dtype=torch.float64)
    y = torch.randn(8, SHAPE[0], generator=g, dtype=torch.float64)
    return ((x @ weight.t() - y) ** 2).mean()


@pytest.mark.parametrize("undrawn, zero_grad_to_none", [("step", False), ("skip", True)])
def test_one_tensor_matches_k_copies_with_masked_gradients(undrawn, zero_grad_to_none):
    """undrawn="step" against the official run (torch 1.11: zero_grad() leaves zero gradients, so a copy
    drawn once is stepped ever after); undrawn="skip" against copies whose gradients are set to None."""
    init = torch.zeros(SHAPE, dtype=torch.float64)  # MoSA splits the zero-initialised Up
    split = ExpertSplit(init, K, torch.Generator().manual_seed(0)).double()
    ours = ExpertAdamW([split.weight], [split], lr=0.05, eps=1e-6, weight_decay=0.01, undrawn=undrawn)
    # The official way: K dense copies, the drawn copy's gradient masked, torch's AdamW.
    copies = [torch.nn.Parameter(init.clone()) for _ in range(K)]
    theirs = torch.optim.AdamW(copies, lr=0.05, eps=1e-6, weight_decay=0.01)
    steps = draws(40)
    assert steps[:3].count(steps[0]) < 3 and len(set(steps[:12])) == K  # experts first drawn at different steps
    for step, k in enumerate(steps):
        loss_of(split.expert(k), step).backward()
        ours.step()
        ours.zero_grad(set_to_none=True)
        loss_of(copies[k], step).backward()
        copies[k].grad.mul_(split.mask(k))
        theirs.step()
        theirs.zero_grad(set_to_none=zero_grad_to_none)
    official_merge = torch.stack([c.detach() for c in copies]).mean(0)
    torch.testing.assert_close(split.merged().detach(), official_merge, rtol=0, atol=1e-12)


def test_the_two_rules_for_undrawn_experts_train_differently():
    merged = {}
    for undrawn in ("step", "skip"):
        split = ExpertSplit(torch.zeros(SHAPE, dtype=torch.float64), K, torch.Generator().manual_seed(0))
        optimizer = ExpertAdamW([split.weight], [split], lr=0.05, undrawn=undrawn)
        for step, k in enumerate(draws(20)):
            loss_of(split.expert(k), step).backward()
            optimizer.step()
            optimizer.zero_grad()
        merged[undrawn] = split.merged().detach()
    assert (merged["step"] - merged["skip"]).abs().max() > 1e-3


def test_skip_changes_only_the_active_experts_elements():
    split = ExpertSplit(torch.zeros(SHAPE), K, torch.Generator().manual_seed(0))
    optimizer = ExpertAdamW([split.weight], [split], lr=0.1, undrawn="skip")
    for step, k in enumerate(draws(12)):
        before = split.weight.detach().clone()
        loss_of(split.expert(k).double(), step).backward()
        optimizer.step()
        optimizer.zero_grad()
        changed = split.weight.detach() != before
        assert not changed[~split.mask(k)].any()
        assert changed[split.mask(k)].all()
        assert not split.active.any()  # reset for the next step


def test_plain_parameters_get_standard_adamw():
    w1 = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    w2 = torch.nn.Parameter(w1.detach().clone())
    ours = ExpertAdamW([w1], [], lr=0.01, weight_decay=0.05)
    ref = torch.optim.AdamW([w2], lr=0.01, eps=1e-6, weight_decay=0.05)
    for step in range(5):
        for w, opt in ((w1, ours), (w2, ref)):
            (w.sum() ** 2 + step * w.pow(3).sum()).backward()
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(w1, w2, rtol=0, atol=1e-12)


def test_step_moves_every_expert_drawn_before_and_none_never_drawn():
    split = ExpertSplit(torch.zeros(SHAPE), K, torch.Generator().manual_seed(0))
    optimizer = ExpertAdamW([split.weight], [split], lr=0.1, weight_decay=0.0)
    drawn: set[int] = set()
    for step, k in enumerate([0, 0, 2, 0, 1, 1]):
        before = split.weight.detach().clone()
        loss_of(split.expert(k).double(), step).backward()
        optimizer.step()
        optimizer.zero_grad()
        drawn.add(k)
        changed = split.weight.detach() != before
        for expert in range(K):  # momentum moves an expert drawn earlier even when it is not drawn now
            assert changed[split.mask(expert)].all() == (expert in drawn)
            assert not changed[split.mask(expert)].any() or expert in drawn
