"""Disjoint element-wise experts of one weight matrix, stored in ONE tensor.

MoSA splits a projection matrix into K experts with disjoint random masks that together cover
the matrix. The official code keeps K dense copies of the matrix (one per expert) and multiplies
each copy's gradient by its mask, so parameters and AdamW state grow K-fold. The experts are
disjoint, so one tensor holds all of them: element (i, j) belongs to exactly one expert,
`assignment[i, j]`, and only that expert ever changes it.

Expert k's weight is `where(assignment == k, weight, init)`: its own elements as trained, every
other element at the value all K copies started from. Its gradient with respect to `weight` is
therefore exactly the mask of expert k, without any gradient hook. The merged weight is the mean
of the K experts, `init + (weight - init) / K`, since the masks partition the matrix.

Where this differs numerically from K copies (see also `ExpertAdamW`):
- Elements outside an expert's mask stay at `init` here. In the K-copy code the optimizer's
  decoupled weight decay still shrinks them whenever that copy is stepped; for a zero-initialised
  matrix (Up) both agree, for a split Down the K-copy experts drift towards zero outside their mask.
- With a stock dense AdamW on `weight`, every element is stepped from the first step on, under one
  step count. In the official K-copy code (torch 1.11, gradients zeroed rather than set to None) a
  copy is skipped until it is first drawn, then stepped at every step with its own step count.
  `ExpertAdamW` reproduces that K-copy update for every masked element exactly (or, as an option,
  steps only the experts drawn in the step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def partition_elements(shape: tuple[int, ...], num_experts: int, generator: torch.Generator) -> Tensor:
    """Assigns every element of a matrix of `shape` to one of `num_experts` experts.

    Random scores cut into K equal-size quantile bins are the same as a random permutation cut
    into K equal chunks; the expert sizes differ by at most one element when K does not divide
    the element count.
    """
    numel = 1
    for size in shape:
        numel *= size
    order = torch.randperm(numel, generator=generator)
    assignment = torch.empty(numel, dtype=torch.uint8)
    assignment[order] = (torch.arange(numel) * num_experts // numel).to(torch.uint8)
    return assignment.view(shape)


class ExpertSplit(nn.Module):
    """A weight matrix whose K disjoint experts share one trainable tensor."""

    def __init__(self, init_weight: Tensor, num_experts: int, generator: torch.Generator) -> None:
        super().__init__()
        if not 2 <= num_experts <= 255:
            raise ValueError(f"num_experts must be in [2, 255], got {num_experts}")
        self.num_experts = num_experts
        self.weight = nn.Parameter(init_weight.detach().clone())
        # Frozen starting values: what expert k sees outside its own mask. Not trained.
        self.register_buffer("init", init_weight.detach().clone())
        self.register_buffer("assignment", partition_elements(tuple(init_weight.shape), num_experts, generator))
        # Which experts took part in the forward passes since the optimizer last stepped.
        self.register_buffer("active", torch.zeros(num_experts, dtype=torch.bool), persistent=False)

    def mask(self, expert: int) -> Tensor:
        return self.assignment == expert

    def expert(self, expert: int) -> Tensor:
        """Expert `expert`'s full weight matrix; marks the expert active for the optimizer."""
        self.active[expert] = True
        return torch.where(self.mask(expert), self.weight, self.init)

    def merged(self) -> Tensor:
        """The mean of the K experts' weights: the exact expectation of a linear map over the draw."""
        return self.init + (self.weight - self.init) / self.num_experts


class DenseWeight(nn.Module):
    """A shared (unsplit) weight with the same interface as `ExpertSplit`."""

    num_experts = 1

    def __init__(self, init_weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init_weight.detach().clone())

    def expert(self, expert: int) -> Tensor:
        return self.weight

    def merged(self) -> Tensor:
        return self.weight
