"""Optimisers and step-size schedules for the dummy inputs.

TAG optimises with "BertAdam" (the optimiser of the original pytorch-pretrained-bert): Adam without bias
correction, with a warm-up then linear decay of the step size and gradient-norm clipping per parameter group.
DLG used L-BFGS. Every optimiser here is driven the same way, ``optimizer.step(closure)``, so the engine needs
no special case for L-BFGS. The step size follows transformers' schedules (``get_linear_schedule_with_warmup``,
``get_constant_schedule_with_warmup``): a ``LambdaLR`` the engine steps once per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup


class BertAdam(Optimizer):
    """Adam as in pytorch-pretrained-bert: no bias correction, per-group grad clipping. The step size is the
    group's ``lr``, which a scheduler (``OptimizerSpec.build``) sets before each step."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, max_grad_norm: float = 1.0) -> None:
        if lr <= 0:
            raise ValueError(f"BertAdam needs lr > 0, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(params, group["max_grad_norm"])
            b1, b2 = group["betas"]
            for p in params:  # two or three tensors (dummy embeddings, label logits): no hot loop
                state = self.state[p]
                if not state:
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                m, v = state["m"], state["v"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-group["lr"])
        return loss


@dataclass(frozen=True)
class OptimizerSpec:
    """Which optimiser drives the dummy, with what step size and schedule. ``build`` makes one per attack."""

    name: str = "bert-adam"  # bert-adam | adam | lbfgs
    lr: float = 0.05
    warmup: float = 0.05  # share of the iterations spent ramping up (bert-adam, adam)
    decay: str = "linear"  # linear | none
    max_grad_norm: float = 1.0

    def build(self, params: list[torch.Tensor], iterations: int) -> tuple[Optimizer, LambdaLR | None]:
        """The optimiser and its step-size schedule (stepped once per iteration; None for L-BFGS)."""
        if self.name == "bert-adam":
            opt: Optimizer = BertAdam(params, self.lr, max_grad_norm=self.max_grad_norm)
        elif self.name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr)
        elif self.name == "lbfgs":
            return torch.optim.LBFGS(params, lr=self.lr, max_iter=1, history_size=100,
                                     tolerance_grad=0.0, tolerance_change=0.0), None
        else:
            raise ValueError(f"unknown optimiser {self.name!r}; accepted: bert-adam, adam, lbfgs")
        total = max(iterations, 1)
        # The warm-up stays a share of the run, so it can end between steps (7.5 of 150 at 0.05): transformers'
        # schedules are plain arithmetic on num_warmup_steps, and rounding it to whole steps would change the
        # step sizes. In float32 the schedule equals the hand-written factors it replaced (checked, T <= 1000).
        warmup_steps = self.warmup * total
        if self.decay == "linear":
            return opt, get_linear_schedule_with_warmup(opt, warmup_steps, total)
        return opt, get_constant_schedule_with_warmup(opt, warmup_steps)
