"""Gradient distances for the matching engine: what "close to the observed gradient" means.

A distance is ``fn(dummy_grads, target) -> scalar tensor``. It sees the dummy's gradients and the observed ones as
two aligned lists of tensors. Every distance here works on the whole list at once with ``torch._foreach_*`` ops:
a Python loop over ~70 parameter tensors per iteration costs more than the arithmetic (NOTES, "Attack cost").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

_LAYER = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


@dataclass
class GradientTarget:
    """The observed gradients the attack matches, in a fixed order, with each tensor's depth in the network.

    ``depth`` is 0 for the embeddings, ``i + 1`` for transformer block ``i`` and ``num_blocks + 1`` for anything
    after the encoder (pooler, classifier): the per-layer weights of TAG decrease with it.
    """

    names: list[str]
    tensors: list[torch.Tensor]
    depths: list[int]
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_gradients(cls, gradients: dict[str, torch.Tensor], names: Sequence[str]) -> "GradientTarget":
        names = list(names)
        blocks = [int(m.group(1)) for n in names if (m := _LAYER.search(n))]
        last = (max(blocks) + 2) if blocks else 1
        depths = [parameter_depth(n, last) for n in names]
        return cls(names, [gradients[n].detach() for n in names], depths)

    @property
    def max_depth(self) -> int:
        return max(self.depths) if self.depths else 0


def parameter_depth(name: str, after_encoder: int) -> int:
    """Depth of a parameter from its name: embeddings 0, block i -> i + 1, pooler/classifier ``after_encoder``."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if "embeddings" in name else after_encoder


Distance = Callable[[Sequence[torch.Tensor], GradientTarget], torch.Tensor]


class _L2L1(torch.autograd.Function):
    """sum_i ||d_i||^2 + sum_i alpha_i ||d_i||_1 over d_i = g'_i - g_i, with a hand-written backward.

    Autograd's own backward of ``_foreach_norm`` runs per tensor (divide by the norm, mask zero norms, sign,
    multiply): on tinybert4 that made the L1 term cost ~40% of a TAG iteration. Here the backward is four foreach
    passes: 2 d_i + alpha_i sign(d_i), times the incoming scalar. The attack differentiates the distance once
    (the second derivative is taken through the dummy gradients, not through this function).
    """

    @staticmethod
    def forward(ctx, targets: list[torch.Tensor], alpha: list[float] | None, *grads: torch.Tensor) -> torch.Tensor:
        diffs = torch._foreach_sub(list(grads), targets)
        value = torch.stack(torch._foreach_norm(diffs, 2)).square().sum()
        if alpha is not None:
            l1 = torch.stack(torch._foreach_norm(diffs, 1))
            value = value + (l1 * torch.tensor(alpha, dtype=l1.dtype)).sum()
        ctx.diffs, ctx.alpha = diffs, alpha
        return value

    @staticmethod
    def backward(ctx, upstream: torch.Tensor):
        diffs, alpha = ctx.diffs, ctx.alpha
        del ctx.diffs
        if alpha is None:
            out = torch._foreach_mul(diffs, 2.0)
        else:
            out = torch._foreach_sign(diffs)
            torch._foreach_mul_(out, alpha)
            torch._foreach_add_(out, diffs, alpha=2.0)
        torch._foreach_mul_(out, upstream)
        return (None, None, *out)


def squared_l2(dummy_grads: Sequence[torch.Tensor], target: GradientTarget) -> torch.Tensor:
    """DLG's objective: sum over all matched tensors of ||g' - g||^2."""
    return _L2L1.apply(target.tensors, None, *dummy_grads)


def tag_distance(scale: float = 0.1, scheme: str = "linear") -> Distance:
    """TAG's objective: ||g' - g||^2 + sum over tensors of alpha(depth) * ||g' - g||_1.

    The paper gives no formula for alpha beyond "decreasing with depth, front layers weigh more"; ``linear`` goes
    from ``scale`` at the embeddings down to ``scale / (max_depth + 1)`` at the classifier, ``exp`` halves per
    layer, ``flat`` is constant.
    """
    if scheme not in ("linear", "exp", "flat"):
        raise ValueError(f"unknown TAG weight scheme {scheme!r}; accepted: linear, exp, flat")

    def distance(dummy_grads: Sequence[torch.Tensor], target: GradientTarget) -> torch.Tensor:
        key = ("tag", scale, scheme)
        if key not in target._cache:
            target._cache[key] = (layer_weights(target.depths, scheme) * scale).tolist()
        return _L2L1.apply(target.tensors, target._cache[key], *dummy_grads)

    return distance


def layer_weights(depths: Sequence[int], scheme: str = "linear") -> torch.Tensor:
    """Per-tensor weights in (0, 1], 1 at depth 0 and decreasing with depth."""
    d = torch.tensor(list(depths), dtype=torch.float32)
    top = float(d.max()) + 1 if len(depths) else 1.0
    if scheme == "linear":
        return (top - d) / top
    if scheme == "exp":
        return 0.5 ** d
    return torch.ones_like(d)


def cosine_distance(dummy_grads: Sequence[torch.Tensor], target: GradientTarget) -> torch.Tensor:
    """1 - cosine similarity of the concatenated gradients (the objective of LAMP and Geiping et al.).

    The dot product comes from norms alone, <a, b> = (|a|^2 + |b|^2 - |a - b|^2) / 2, so it needs only foreach ops.
    """
    dummy_grads = list(dummy_grads)
    sq_d = torch.stack(torch._foreach_norm(dummy_grads, 2)).square().sum()
    sq_t = target._cache.get("sq_norm")
    if sq_t is None:
        sq_t = torch.stack(torch._foreach_norm(target.tensors, 2)).square().sum()
        target._cache["sq_norm"] = sq_t
    sq_diff = torch.stack(torch._foreach_norm(torch._foreach_sub(dummy_grads, target.tensors), 2)).square().sum()
    dot = (sq_d + sq_t - sq_diff) / 2
    return 1 - dot / (sq_d * sq_t).sqrt().clamp_min(1e-20)


DISTANCES: dict[str, Callable[..., Distance]] = {
    "l2": lambda: squared_l2,
    "tag": tag_distance,
    "cos": lambda: cosine_distance,
}
