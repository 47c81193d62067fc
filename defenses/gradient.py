"""The defended gradient step: what the attack CLI and the Flower client call instead of ``batch_gradients``.

This is the only place defenses run in a federation: in every local SGD step, where DP-SGD sees per-example
gradients (a Flower mod around the client would see only the finished update).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from defenses.dpsgd import dp_sgd_gradients
from defenses.specs import Defense, DpSgd, SpecsLike, format_defenses, parse_defenses, unresolved_budget
from defenses.transforms import defend_update, make_generator
from fedsim.core.train import Batch, GradientFn, batch_gradients


class DefendedGradient:
    """``batch_gradients`` with defenses applied in order, before anything leaves the client.

    With ``dp:`` first the gradient itself is DP-SGD's (per-example clipping and noise); the remaining transforms
    then act on that gradient. Each call draws fresh noise from the generator, so a seeded generator gives the
    same sequence of defended gradients run after run.
    """

    def __init__(self, defenses: tuple[Defense, ...], generator: torch.Generator | None,
                 max_chunk: int | None = None) -> None:
        self.defenses = defenses
        self.generator = generator
        self.max_chunk = max_chunk

    def __call__(self, model: PreTrainedModel, batch: Batch) -> dict[str, torch.Tensor]:
        rest = self.defenses
        if rest and isinstance(rest[0], DpSgd):
            grads = dp_sgd_gradients(model, batch, rest[0].sigma, rest[0].c, self.generator, self.max_chunk)
            rest = rest[1:]
        else:
            grads = batch_gradients(model, batch)
        return defend_update(rest, grads, self.generator)

    def __repr__(self) -> str:
        return f"DefendedGradient({format_defenses(self.defenses)!r})"


def build_gradient_fn(specs: SpecsLike, generator: torch.Generator | int | None = None,
                      max_chunk: int | None = None) -> GradientFn:
    """The gradient function for a defense setting; plain ``batch_gradients`` itself when there is none.

    ``specs``: ``--defense`` values in order (``[]``, ``["none"]``, ``["clip:c=1", "noise:sigma=0.01"]``,
    ``"dp:sigma=1,c=1"``). ``generator``: a torch Generator or an int seed (None: torch's global RNG).
    ``max_chunk``: examples per vectorised per-example-gradient chunk for ``dp:`` (None: sized to memory).
    Malformed specs, and epsilon budgets not yet resolved to a sigma, raise ``UsageError`` here, before any
    training starts.
    """
    defenses = unresolved_budget(parse_defenses(specs))
    if not defenses:
        return batch_gradients
    return DefendedGradient(defenses, make_generator(generator), max_chunk)
