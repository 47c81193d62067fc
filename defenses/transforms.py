"""Update-level transforms: what a client can do to a gradient or weight delta before it leaves the client.

An update is ``dict[name, Tensor]`` (``batch_gradients``'s output, or a FedAvg delta). Every transform returns a new
dict and leaves its input alone; clipping and pruning look at the update as one flat vector, as DLG and DP-FedAvg do.
Only floating-point tensors are touched (integer buffers in a Flower ArrayRecord pass through).
"""

from __future__ import annotations

from typing import Mapping

import torch

from defenses.specs import Clip, DpSgd, Noise, Prune, SpecsLike, parse_defenses, unresolved_budget
from fedsim.core.errors import UsageError

Update = dict[str, torch.Tensor]


def make_generator(seed: torch.Generator | int | None) -> torch.Generator | None:
    """A seed becomes a CPU generator; None keeps torch's global RNG (seeded by ``seed_everything``)."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def gaussian_like(t: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, std^2) noise shaped like ``t``, drawn from ``generator`` (on its device) when given."""
    if generator is None:
        return torch.randn(t.shape, dtype=t.dtype, device=t.device) * std
    return (torch.randn(t.shape, dtype=t.dtype, device=generator.device, generator=generator) * std).to(t.device)


def add_noise(update: Mapping[str, torch.Tensor], sigma: float, generator: torch.Generator | None = None) -> Update:
    """Add N(0, sigma^2) to every coordinate."""
    if sigma == 0:
        return dict(update)
    return {n: t + gaussian_like(t, sigma, generator) if t.is_floating_point() else t for n, t in update.items()}


def global_norm(update: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """L2 norm of the whole update seen as one vector."""
    floats = [t for t in update.values() if t.is_floating_point()]
    if not floats:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in floats]))


def clip_update(update: Mapping[str, torch.Tensor], c: float) -> Update:
    """Scale the update to L2 norm ``c`` if it is longer; a shorter update comes back unchanged (same values)."""
    norm = float(global_norm(update))
    if norm <= c:
        return dict(update)
    factor = c / norm
    return {n: t * factor if t.is_floating_point() else t for n, t in update.items()}


def prune_update(update: Mapping[str, torch.Tensor], p: float) -> Update:
    """Zero exactly floor(p * n) entries of smallest magnitude, ranked over all n float entries of the update.

    Ties at the threshold are broken by position, so the count is exact even when many entries are equal
    (unused word-embedding rows have gradient exactly 0).
    """
    names = [n for n, t in update.items() if t.is_floating_point()]
    if p <= 0 or not names:
        return dict(update)
    flat = torch.cat([update[n].detach().abs().flatten().float().cpu() for n in names])
    k = int(p * flat.numel())
    if k == 0:
        return dict(update)
    threshold = flat.kthvalue(k).values
    below = flat < threshold
    ties = flat == threshold
    drop = below | (ties & (ties.cumsum(0) <= k - int(below.sum())))
    out = dict(update)
    start = 0
    for n in names:
        t = update[n]
        mask = drop[start:start + t.numel()].view(t.shape).to(t.device)
        out[n] = t.masked_fill(mask, 0.0)
        start += t.numel()
    return out


def defend_update(specs: SpecsLike, update: Mapping[str, torch.Tensor],
                  generator: torch.Generator | int | None = None) -> Update:
    """Apply update-level defenses (noise, clip, prune) in order to a gradient or a FedAvg weight delta.

    ``dp:`` needs the examples, not an update: use ``build_gradient_fn`` for it.
    """
    gen = make_generator(generator)
    out = dict(update)
    for d in unresolved_budget(parse_defenses(specs)):
        if isinstance(d, Noise):
            out = add_noise(out, d.sigma, gen)
        elif isinstance(d, Clip):
            out = clip_update(out, d.c)
        elif isinstance(d, Prune):
            out = prune_update(out, d.p)
        elif isinstance(d, DpSgd):
            raise UsageError(f"defense {str(d)!r} needs per-example gradients, not a finished update: apply it in "
                             f"the client's gradient step (build_gradient_fn); accepted here: noise, clip, prune")
    return out
