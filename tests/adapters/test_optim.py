"""ExpertAdamW on one tensor reproduces the official K-dense-copies training exactly."""

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


def test_one_tensor_matches_k_copies_with_masked_gradients():
    init = torch.zeros(SHAPE, dtype=torch.float64)  # MoSA splits the zero-initialised Up
    split = ExpertSplit(init, K, torch.Generator().manual_seed(0)).double()
    ours = ExpertAdamW([split.weight], [split], lr=0.05, eps=1e-6, weight_decay=0.01)
    # The official way: K dense copies, the drawn copy's gradient masked, torch's AdamW.
    copies = [torch.nn.Parameter(init.clone()) for _ in range(K)]
    theirs = torch.optim.AdamW(copies, lr=0.05, eps=1e-6, weight_decay=0.01)
    for step, k in enumerate(draws(30)):
        loss_of(split.expert(k), step).backward()
        ours.step()
        ours.zero_grad(set_to_none=True)
        loss_of(copies[k], step).backward()
        copies[k].grad.mul_(split.mask(k))
        theirs.step()
        theirs.zero_grad(set_to_none=True)  # inactive copies have no gradient and are skipped
    official_merge = torch.stack([c.detach() for c in copies]).mean(0)
    torch.testing.assert_close(split.merged().detach(), official_merge, rtol=0, atol=1e-12)


def test_a_step_changes_only_the_active_experts_elements():
    split = ExpertSplit(torch.zeros(SHAPE), K, torch.Generator().manual_seed(0))
    optimizer = ExpertAdamW([split.weight], [split], lr=0.1)
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
