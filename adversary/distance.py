"""Gradient distances: what "close to the observed gradient" means, for every attack, in one place.

Two kinds. The differentiable objectives the matching engine minimises are ``fn(dummy_grads, target) -> scalar
tensor`` over two aligned lists of tensors (:class:`GradientTarget`): squared L2 (DLG), TAG's L2 + per-layer
weighted L1, the global cosine, LAMP's per-layer cosine. Each works on the whole list at once with
``torch._foreach_*`` ops: a Python loop over ~70 parameter tensors per iteration costs more than the arithmetic
(NOTES, "Attack cost").

The candidate yardstick (:func:`candidate_distance`) judges a batch of *token ids*: 1 - cosine of the gradient it
produces against the observed one, over every observed tensor (word embeddings included), in float64. `best`
picks among attacks with it (their own losses are not comparable). Cosine, not L2, so that clipping (a rescaled
gradient) does not change the ranking. Only the observation is read.

The reproduction test (:func:`reproduces`), the one place that may call a reconstruction *certified*: the batch's
lengths match the public ones when given, and its yardstick distance is below :func:`reproduction_tolerance`
(float32 rounding plus the published error bound ``Observation.gradient_error``). `span` (B = 1 and B > 1), `best`
and the registry (for every other attack) all use it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from adversary.case import Observation
from fedsim.core.train import EPS32, batch_gradients

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


class LayerCosine:
    """Weighted mean over tensors of 1 - cos(g'_i, g_i) (LAMP's ``grad_dist`` with ``--loss cos``: plain mean).

    ``weights`` (one per tensor, default all 1) leave out tensors whose gradient is zero by construction (BERT's
    attention key biases: adding a constant to every key of a query changes no softmax), whose float32 residue
    would otherwise add a large, meaningless cosine, and under noise weigh each tensor by its share of signal
    (:func:`adversary.noise.signal_weights`). Written as (|d|^2 - (|a| - |b|)^2) / (2 |a| |b|), d = a - b:
    foreach norms only, and no cancellation when the two gradients are close."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None

    def __call__(self, dummy_grads: Sequence[torch.Tensor], target: GradientTarget) -> torch.Tensor:
        dummy_grads = list(dummy_grads)
        norm_t = target._cache.get("norms")
        if norm_t is None:
            norm_t = torch.stack(torch._foreach_norm(target.tensors, 2))
            target._cache["norms"] = norm_t
        norm_d = torch.stack(torch._foreach_norm(dummy_grads, 2))
        diff = torch.stack(torch._foreach_norm(torch._foreach_sub(dummy_grads, target.tensors), 2))
        per_tensor = (diff.square() - (norm_d - norm_t).square()) / (2 * norm_d * norm_t).clamp_min(1e-30)
        if self.weights is None:
            return per_tensor.mean()
        return (per_tensor * self.weights).sum() / self.weights.sum()


def candidate_batch(observation: Observation, token_ids: Sequence[Sequence[int]],
                    labels: Sequence[int] | None = None,
                    segments: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
    """The model input for candidate sequences (special tokens included), padded, with their labels if given.

    Segment ids: ``segments`` when given, else the observation's for sequences of these lengths, else zeros.
    """
    pad = observation.tokenizer.pad_token_id or 0
    width = max(len(q) for q in token_ids)
    ids = torch.full((len(token_ids), width), pad, dtype=torch.long)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    known = segments if segments is not None else observation.segment_ids
    for i, seq in enumerate(token_ids):
        ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
        if known is not None and i < len(known) and len(known[i]) == len(seq):
            types[i, : len(seq)] = torch.tensor(list(known[i]), dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if labels is not None:
        batch["labels"] = torch.tensor([int(y) for y in labels], dtype=torch.long)
    return batch


def batch_cosine_distance(observation: Observation, batch: dict[str, torch.Tensor]) -> float:
    """1 - cosine(gradient of a labelled model batch, observed gradient) over the observed tensors, in float64;
    ``inf`` when either gradient is zero."""
    grads = batch_gradients(observation.model, batch)
    names = [n for n in observation.gradients if n in grads]
    dot = sq_a = sq_b = 0.0
    for name in names:
        a, b = grads[name].double(), observation.gradients[name].double()
        dot += float((a * b).sum())
        sq_a += float(a.square().sum())
        sq_b += float(b.square().sum())
    if sq_a == 0.0 or sq_b == 0.0:
        return math.inf
    return 1.0 - dot / math.sqrt(sq_a * sq_b)


def candidate_distance(observation: Observation, token_ids: Sequence[Sequence[int]], labels: Sequence[int],
                       segments: Sequence[Sequence[int]] | None = None) -> float:
    """The yardstick (module doc) for candidate token ids and labels; ``inf`` for a malformed candidate (wrong
    number of sequences or labels, an empty sequence), so that it never wins."""
    if (len(token_ids) != observation.batch_size or len(labels) != len(token_ids)
            or any(len(q) == 0 for q in token_ids)):
        return math.inf
    return batch_cosine_distance(observation, candidate_batch(observation, token_ids, labels, segments))


def relative_error(obs: Observation) -> float:
    """||E|| / ||G|| over the whole gradient: 1 - cos(G + E, G) is at most about half its square."""
    if not obs.gradient_error:
        return 0.0
    norm = math.sqrt(sum(float(g.double().square().sum()) for g in obs.gradients.values()))
    return obs.error_of(list(obs.gradients)) / max(norm, 1e-300)


def reproduction_tolerance(observation: Observation) -> float:
    """The largest yardstick distance an exact batch can show: float32 rounding plus the published error."""
    return EPS32 + relative_error(observation) ** 2


def reproduces(observation: Observation, token_ids: Sequence[Sequence[int]], labels: Sequence[int],
               segments: Sequence[Sequence[int]] | None = None) -> tuple[bool, float]:
    """The reproduction test (module doc): (passed, distance). A batch whose lengths differ from the public
    ``seq_lengths`` (compared as a multiset: an attack may return the sequences in another order) fails."""
    distance = candidate_distance(observation, token_ids, labels, segments)
    return passes(observation, token_ids, distance), distance


def passes(observation: Observation, token_ids: Sequence[Sequence[int]], distance: float) -> bool:
    """The verdict of :func:`reproduces` for a yardstick ``distance`` already computed (by `best`, say)."""
    if observation.seq_lengths is not None and \
            sorted(len(q) for q in token_ids) != sorted(int(n) for n in observation.seq_lengths):
        return False
    return bool(distance < reproduction_tolerance(observation))
