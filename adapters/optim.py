"""AdamW that steps a MoSA split tensor as the official code steps its K separate expert copies.

In the official MoSA code each expert is a dense copy of the matrix, and its pinned torch 1.11's
`optimizer.zero_grad()` sets gradients to zero instead of None. So a copy drawn once is stepped by
AdamW at every later step, with a zero gradient whenever it is not drawn: its step count grows, its
moments decay, its momentum keeps moving it and weight decay applies. A copy never drawn yet has no
gradient and is skipped.

`ExpertAdamW(undrawn="step")` (the default) reproduces that for every masked element, with one step
count per expert for bias correction; an expert has been drawn once exactly when its step count is
positive, so no other state is kept. `undrawn="skip"` steps only the experts drawn since the last
step (what the official code would do with gradients set to None): an undrawn expert keeps its
moments, step count and weights. Ordinary parameters get the standard decoupled AdamW update. The
choice between these and a plain dense AdamW is `TrainConfig.optimizer`.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from .experts import ExpertSplit

UNDRAWN_RULES = ("step", "skip")


class ExpertAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable,
        splits: Iterable[ExpertSplit],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        undrawn: str = "step",
    ) -> None:
        if undrawn not in UNDRAWN_RULES:
            raise ValueError(f"undrawn must be one of {UNDRAWN_RULES}, got {undrawn!r}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._splits = {id(split.weight): split for split in splits}
        self.undrawn = undrawn

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group, self._splits.get(id(param)))
        for split in self._splits.values():
            split.active.zero_()
        return loss

    def _update(self, param: Tensor, group: dict, split: ExpertSplit | None) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[param]
        if not state:
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
            # float64 step counts: bias corrections as precise as torch's own (python float) ones.
            state["step"] = torch.zeros(split.num_experts if split else 1, dtype=torch.float64, device=param.device)
        if split is None:
            updated, state["step"] = None, state["step"] + 1
            step = state["step"]
        else:
            stepped = split.active | (state["step"] > 0) if self.undrawn == "step" else split.active
            if not bool(stepped.any()):
                return
            state["step"] = state["step"] + stepped.to(state["step"].dtype)
            updated = stepped[split.assignment.long()]
            step = state["step"][split.assignment.long()]
        grad, exp_avg, exp_avg_sq = param.grad, state["exp_avg"], state["exp_avg_sq"]
        new_avg = exp_avg * beta1 + grad * (1 - beta1)
        new_avg_sq = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
        step = step.clamp(min=1)  # elements of never-active experts are masked out below
        correction1 = (1 - beta1**step).to(param.dtype)
        correction2 = (1 - beta2**step).to(param.dtype)
        denom = (new_avg_sq / correction2).sqrt() + group["eps"]
        delta = group["lr"] * ((new_avg / correction1) / denom + group["weight_decay"] * param)
        if updated is None:
            exp_avg.copy_(new_avg)
            exp_avg_sq.copy_(new_avg_sq)
            param.sub_(delta)
        else:
            exp_avg.copy_(torch.where(updated, new_avg, exp_avg))
            exp_avg_sq.copy_(torch.where(updated, new_avg_sq, exp_avg_sq))
            param.sub_(torch.where(updated, delta, torch.zeros_like(delta)))
