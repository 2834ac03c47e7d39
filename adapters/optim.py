"""AdamW that steps a MoSA split tensor as K separate expert copies would be stepped.

In the official MoSA code each expert is a dense copy of the matrix; an expert not drawn in a step
has no gradient, so AdamW skips it (no moment decay, no weight decay, no step) and its own step
count stays where it was. With all experts in one tensor (`ExpertSplit`), a stock AdamW would
instead decay the moments of inactive experts' elements and keep moving them on momentum.

`ExpertAdamW` updates only the elements of experts that were active since the last step, and keeps
one step count per expert for bias correction: every masked element follows exactly the update
its K-copy expert would get. Ordinary parameters get the standard decoupled AdamW update. The
choice between this and a plain dense AdamW is `TrainConfig.optimizer`.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from .experts import ExpertSplit


class ExpertAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable,
        splits: Iterable[ExpertSplit],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._splits = {id(split.weight): split for split in splits}

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
            active = split.active
            if not bool(active.any()):
                return
            state["step"] = state["step"] + active.to(state["step"].dtype)
            updated = active[split.assignment.long()]
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
