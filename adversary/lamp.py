"""LAMP (Balunović et al., NeurIPS 2022) as a configuration of the gradient-matching engine plus one hook.

What LAMP adds to TAG, each piece here:

- **Distance**: the cosine between the dummy's and the observed gradient *per tensor*, averaged over tensors
  (LAMP_cos; every layer counts the same, where a global cosine is dominated by the largest tensors), or
  ``l1l2`` (LAMP_L1L2: squared L2 plus a small L1 term), or the sum of both (``cos+l1l2``). The default, ``auto``,
  is ``cos`` on a clean gradient and squared ``l2`` when :mod:`adversary.noise` reads noise in it: L2 is the
  maximum-likelihood distance under Gaussian noise, while a per-tensor cosine lets noise-swamped small tensors
  steer, and then ranks a wrong order as often as the right one (measured: tinybert4, sigma = 1e-3).
- **Embedding-norm prior**: ``norm_weight * (mean_i ||e_i|| / target - 1)^2`` over the free positions, the target
  being the mean norm of the real embeddings the answer can use (LAMP's ``(mean ||x|| - 1.4)^2`` made scale-free:
  random-init models have norms near 0.35, not BERT's 1.4).
- **Vocabulary**: decoding restricted to :func:`adversary.token_set.token_set` when that set is informative; under
  noise (where it is the whole vocabulary) to the rows above the noise (:func:`adversary.noise.noisy_token_set`)
  when those are plausible; else nothing is restricted.
- **Initialisation**: the best (lowest distance) of ``init_candidates`` random starts, then of as many random
  orders of it, as LAMP does.
- **Discrete moves**: every ``discrete_every`` steps after a burn-in, ``candidates`` random reorderings of the
  decoded tokens of each sequence (swap two tokens, move a token, move a span, put a prefix at the end), each
  scored by the gradient distance of its *decoded* tokens (real embeddings), the best kept when it beats the
  current decoding; the continuous dummy is then permuted the same way, so the optimisation continues from it.
  Our addition, ``replace``, when the vocabulary is restricted: put a token of the set at a position (preferably
  a token the decoding misses where a repeated one stands), which reorderings alone cannot do. After the last
  iteration up to ``polish`` wider discrete steps run while they still lower the distance.
- LAMP's GPT-2 prior is left out: no language model is available offline here.

``budget.iterations`` counts continuous steps; the discrete moves come on top (``info["discrete_evaluations"]``, each
one forward/backward without a second-order graph, about a third of a step's cost). ``budget.seconds`` stops
the random starts, the continuous loop and the discrete steps it drives at the deadline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from adversary.case import Observation, Reconstruction
from adversary.distance import Distance, LayerCosine, squared_l2, tag_distance
from adversary.dummy import Decoder
from adversary.engine import LABEL_STRATEGIES, GradientMatcher, Hook, MatchConfig, attack_mode
from adversary.moves import MOVES, DiscreteMoves
from adversary.noise import noise_level, noisy_token_set, signal_weights
from adversary.optim import OptimizerSpec
from adversary.options import AttackOptions, Budget, choice
from adversary.registry import register
from adversary.token_set import token_set
from fedsim.core.errors import UsageError

DISTANCES = ("auto", "cos", "l2", "l1l2", "cos+l1l2")


def structural_zeros(matcher: GradientMatcher, rel: float = 1e-5) -> torch.Tensor:
    """Tensors whose gradient at the starting dummy is below ``rel`` x the median tensor norm: zero by the
    architecture, not by the data (read from the model, so noise on the observed gradient does not hide them)."""
    with torch.enable_grad():
        embeds = matcher.model_inputs(matcher.state.dummy.detach())
        logits = matcher.model(inputs_embeds=embeds, attention_mask=matcher.layout.attention_mask,
                               token_type_ids=matcher.layout.token_type_ids).logits
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
        grads = torch.autograd.grad(loss, matcher.params)
    norms = torch.stack([g.detach().norm() for g in grads])
    return norms < rel * norms.median()


def lamp_distance(kind: str, l1_weight: float = 1e-3) -> Distance:
    """``cos`` (LAMP_cos), ``l1l2`` (LAMP_L1L2: L2^2 + ``l1_weight`` * L1, flat over layers), their sum, or
    ``l2`` (squared L2: the maximum-likelihood distance under Gaussian noise)."""
    if kind not in DISTANCES or kind == "auto":
        raise UsageError(f"unknown lamp distance {kind!r}; accepted: {', '.join(DISTANCES)}")
    l1l2, cosine = tag_distance(l1_weight, "flat"), LayerCosine()
    if kind == "cos":
        return cosine
    if kind == "l2":
        return squared_l2
    if kind == "l1l2":
        return l1l2
    combined = lambda grads, target: cosine(grads, target) + l1l2(grads, target)  # noqa: E731
    combined.cosine = cosine  # type: ignore[attr-defined]
    return combined


class NormPrior:
    """``weight * (mean norm of the free dummy embeddings / target - 1)^2`` (LAMP's embedding regulariser)."""

    def __init__(self, weight: float) -> None:
        self.weight, self.target, self.free = weight, 1.0, None

    def __call__(self, embeds: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.free is None or self.weight == 0:
            return embeds.new_zeros(())
        norms = embeds[self.free].norm(dim=-1)
        return self.weight * (norms.mean() / self.target - 1).square()


def restrict_vocabulary(matcher: GradientMatcher, observation: Observation, sigma: float = 0.0) -> int:
    """Decode only into the batch's tokens when the embedding gradient tells them (under noise of level
    ``sigma``, the rows above the noise); returns the allowed count."""
    tokens = token_set(observation)
    if tokens.numel() >= matcher.allowed.numel() and sigma > 0:
        tokens = noisy_token_set(observation, sigma)
        if tokens is None:
            return int(matcher.allowed.sum())
    allowed = matcher.allowed
    if tokens.numel() < allowed.numel():
        mask = torch.zeros_like(allowed)
        mask[tokens] = True
        if bool((allowed & mask).any()):
            allowed = allowed & mask
            matcher.allowed = allowed
            matcher.decoder = Decoder(matcher.embedding, allowed, matcher.config.decode)
    return int(allowed.sum())


@torch.no_grad()
def choose_start(matcher: GradientMatcher, tries: int, target_norm: float, deadline: float = math.inf) -> float:
    """LAMP's initialisation: the best of ``tries`` random starts, then of ``tries`` random orders of it, each
    rescaled to the target norm per position; no more tries past ``deadline`` (perf_counter). Returns the chosen
    start's distance."""
    dummy, free = matcher.state.dummy, matcher.layout.free
    std = float(dummy.detach().std()) or 1.0

    def rescale(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) * target_norm

    def value(x: torch.Tensor) -> float:
        with torch.enable_grad():
            return float(matcher.distance(x, create_graph=False))

    best = rescale(dummy.detach().clone())
    best_value = value(best)
    for _ in range(max(tries - 1, 0)):
        if time.perf_counter() > deadline:
            break
        x = rescale(torch.randn(dummy.shape, generator=matcher.generator, dtype=dummy.dtype) * std)
        if (v := value(x)) < best_value:
            best, best_value = x, v
    for _ in range(max(tries - 1, 0)):
        if time.perf_counter() > deadline:
            break
        x = best.clone()
        for b in range(x.shape[0]):
            pos = free[b].nonzero().flatten()
            x[b, pos] = best[b, pos[torch.randperm(pos.numel(), generator=matcher.generator)]]
        if (v := value(x)) < best_value:
            best, best_value = x, v
    dummy.copy_(best)
    return best_value


@dataclass(frozen=True)
class LampOptions(AttackOptions):
    """``lr``: Adam step size, decayed linearly to 0; ``distance``: module doc (``auto`` reads the noise);
    ``noise_aware``: read the noise level (:mod:`adversary.noise`) to pick the distance and the vocabulary;
    ``restrict``: decode into the token set; ``init_candidates``: random starts tried; ``discrete_every`` 0 turns
    the discrete moves off; ``candidates``: edits per discrete step; ``burn_in``: share of the iterations before
    the first discrete step; ``polish``: extra discrete steps (4 x ``candidates`` each) after the last iteration
    while they help; ``labels`` as in the engine, or ``auto``: ``analytic`` for B = 1 (exact from the bias
    gradient; LAMP assumes known labels), ``joint-analytic`` for B > 1 (the analytic multiset does not say which
    sequence has which label)."""

    lr: float = 0.01
    distance: str = choice("auto", *DISTANCES)
    l1_weight: float = 1e-3
    norm_weight: float = 1.0
    restrict: bool = True
    noise_aware: bool = True
    init: str = "normal"
    init_candidates: int = 20
    discrete_every: int = 50
    candidates: int = 40
    burn_in: float = 0.1
    moves: tuple[str, ...] = choice(MOVES, *MOVES)
    polish: int = 5
    labels: str = choice("auto", "auto", *LABEL_STRATEGIES)
    record_every: int = 10
    hooks: tuple[Hook, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.candidates < 0 or self.discrete_every < 0 or self.init_candidates < 1:
            raise UsageError("lamp: candidates and discrete_every must be >= 0, init_candidates >= 1")


@register("lamp", LampOptions)
def lamp(observation: Observation, budget: Budget, seed: int, options: LampOptions) -> Reconstruction:
    """LAMP (module doc; options: :class:`LampOptions`)."""
    o, iterations = options, budget.iterations
    labels, distance = o.labels, o.distance
    if labels == "auto":
        labels = "analytic" if observation.batch_size == 1 else "joint-analytic"
    sigma = noise_level(observation) if o.noise_aware else 0.0
    if distance == "auto":
        distance = "l2" if sigma > 0 else "cos"
    prior = NormPrior(o.norm_weight)
    config = MatchConfig(distance=lamp_distance(distance, o.l1_weight), init=o.init, labels=labels, clamp=False,
                         optimizer=OptimizerSpec("adam", lr=o.lr, warmup=0.0, decay="linear"), decode="cos",
                         keep="last", record_every=o.record_every, regularizer=prior)
    matcher = GradientMatcher(observation, config, seed)
    usable = int(matcher.allowed.sum())
    vocabulary = restrict_vocabulary(matcher, observation, sigma) if o.restrict else usable
    prior.free = matcher.layout.free
    prior.target = float(matcher.embedding.detach()[matcher.allowed].norm(dim=1).mean())
    cosine = getattr(config.distance, "cosine", config.distance)
    with attack_mode(matcher.model):
        if isinstance(cosine, LayerCosine):
            usable_tensors = (~structural_zeros(matcher)).double()
            weights = signal_weights(matcher.target.tensors, sigma) * usable_tensors
            cosine.weights = (weights if bool(weights.sum() > 0) else usable_tensors).float()
        start_distance = choose_start(matcher, o.init_candidates, prior.target, budget.deadline(matcher.started))
    discrete = DiscreteMoves(o.discrete_every, o.candidates, start=max(1, int(o.burn_in * iterations)),
                             last=iterations, seed=seed, kinds=o.moves,
                             vocabulary=matcher.allowed.nonzero().flatten() if vocabulary < usable else None,
                             polish=o.polish)
    rec = matcher.run(iterations, hooks=(discrete, *o.hooks), seconds=budget.seconds)
    rec.info.update(method="lamp", distance=distance, vocabulary_size=vocabulary, noise_level=sigma,
                    vocabulary_restricted=vocabulary < usable,
                    start_distance=start_distance, discrete_steps=discrete.steps,
                    discrete_accepted=discrete.accepted, discrete_evaluations=discrete.evaluations,
                    decoded_distance=_decoded_distance(matcher, discrete, rec.token_ids),
                    language_model_prior=False)
    return rec


def _decoded_distance(matcher: GradientMatcher, discrete: DiscreteMoves, token_ids: list[list[int]]) -> float:
    """The lamp distance of the final decoded tokens (what the answer is, not the continuous dummy)."""
    bsz, width = matcher.layout.shape
    ids = torch.full((bsz, width), matcher.observation.tokenizer.pad_token_id or 0, dtype=torch.long)
    for b, seq in enumerate(token_ids):
        ids[b, : len(seq)] = torch.tensor(seq)
    with attack_mode(matcher.model):
        value = discrete.score(matcher, ids)
    discrete.evaluations -= 1  # a report, not part of the search
    return value
