"""Optimisers and step-size schedules for the dummy inputs.

TAG optimises with "BertAdam" (the optimiser of the original pytorch-pretrained-bert): Adam without bias
correction, with a warm-up then linear decay of the step size and gradient-norm clipping per parameter group.
DLG used L-BFGS. Every optimiser here is driven the same way, ``optimizer.step(closure)``, so the engine needs
no special case for L-BFGS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer


def warmup_linear(warmup: float) -> Callable[[float], float]:
    """Step-size factor at progress x in [0, 1]: ramps up over the first ``warmup`` share, then decays to 0."""
    def factor(x: float) -> float:
        if warmup > 0 and x < warmup:
            return x / warmup
        return max((1.0 - x) / max(1.0 - warmup, 1e-12), 0.0)
    return factor


def warmup_constant(warmup: float) -> Callable[[float], float]:
    """Ramps up over the first ``warmup`` share, then stays at 1."""
    return lambda x: min(x / warmup, 1.0) if warmup > 0 else 1.0


def constant(_: float) -> float:
    return 1.0


class BertAdam(Optimizer):
    """Adam as in pytorch-pretrained-bert: no bias correction, scheduled lr, per-group grad clipping."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, total_steps: int,
                 schedule: Callable[[float], float] = constant, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, max_grad_norm: float = 1.0) -> None:
        if lr <= 0 or total_steps <= 0:
            raise ValueError(f"BertAdam needs lr > 0 and total_steps > 0, got {lr}, {total_steps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, max_grad_norm=max_grad_norm))
        self.total_steps = total_steps
        self.schedule = schedule
        self.steps_done = 0

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        factor = self.schedule(self.steps_done / self.total_steps)
        self.steps_done += 1
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
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-group["lr"] * factor)
        return loss


@dataclass(frozen=True)
class OptimizerSpec:
    """Which optimiser drives the dummy, with what step size and schedule. ``build`` makes one per attack."""

    name: str = "bert-adam"  # bert-adam | adam | lbfgs
    lr: float = 0.05
    warmup: float = 0.05  # share of the iterations spent ramping up (bert-adam, adam)
    decay: str = "linear"  # linear | none
    max_grad_norm: float = 1.0

    def build(self, params: list[torch.Tensor], iterations: int) -> tuple[Optimizer, object | None]:
        """The optimiser and an optional LR scheduler to step once per iteration."""
        schedule = warmup_linear(self.warmup) if self.decay == "linear" else warmup_constant(self.warmup)
        if self.name == "bert-adam":
            return BertAdam(params, self.lr, iterations, schedule, max_grad_norm=self.max_grad_norm), None
        if self.name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr)
            total = max(iterations, 1)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step / total))
            return opt, sched
        if self.name == "lbfgs":
            return torch.optim.LBFGS(params, lr=self.lr, max_iter=1, history_size=100,
                                     tolerance_grad=0.0, tolerance_change=0.0), None
        raise ValueError(f"unknown optimiser {self.name!r}; accepted: bert-adam, adam, lbfgs")

