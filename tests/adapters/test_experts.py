import torch

from mosaserve.adapters.experts import ExpertSplit, partition_elements


def test_partition_is_disjoint_covering_and_equal_size():
    assignment = partition_elements((32, 16), 4, torch.Generator().manual_seed(0))
    counts = torch.bincount(assignment.flatten().long(), minlength=4)
    assert counts.tolist() == [128, 128, 128, 128]  # every element in exactly one expert
    masks = [assignment == k for k in range(4)]
    assert torch.stack(masks).sum(0).eq(1).all()


def test_partition_sizes_differ_by_at_most_one_when_k_does_not_divide():
    counts = torch.bincount(partition_elements((7, 5), 4, torch.Generator().manual_seed(0)).flatten().long())
    assert counts.sum() == 35 and counts.max() - counts.min() <= 1


def test_partition_is_reproducible_from_seed_and_random_across_seeds():
    a = partition_elements((16, 8), 4, torch.Generator().manual_seed(7))
    b = partition_elements((16, 8), 4, torch.Generator().manual_seed(7))
    c = partition_elements((16, 8), 4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_expert_weight_and_merge_semantics():
    init = torch.randn(6, 4, dtype=torch.float64)
    split = ExpertSplit(init, 3, torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        split.weight.add_(torch.randn_like(init))
    experts = [split.expert(k) for k in range(3)]
    for k, expert in enumerate(experts):
        mask = split.mask(k)
        assert torch.equal(expert[mask], split.weight[mask])
        assert torch.equal(expert[~mask], init[~mask])  # outside its mask an expert keeps the init
    torch.testing.assert_close(split.merged(), torch.stack(experts).mean(0), rtol=0, atol=1e-12)
    assert split.active.all()


def test_gradient_reaches_only_the_drawn_experts_elements():
    split = ExpertSplit(torch.zeros(8, 8), 4, torch.Generator().manual_seed(0))
    (split.expert(2) * torch.randn(8, 8)).sum().backward()
    assert torch.count_nonzero(split.weight.grad[~split.mask(2)]) == 0
    assert torch.count_nonzero(split.weight.grad[split.mask(2)]) == split.mask(2).sum()
