"""DLG and TAG as configurations of the gradient-matching engine.

DLG (Zhu et al., 2019): squared L2 between gradients, dummy inputs and soft labels optimised jointly from a
standard-normal start with L-BFGS. TAG (Deng et al., 2021): L2 plus a per-layer weighted L1 term that weighs the
front layers more, BertAdam with lr 0.05 and warm-up/linear decay, a dummy started from a normal distribution (at
the word embeddings' own scale unless told otherwise) or a constant and kept inside the embeddings' range.
``budget.iterations`` counts optimisation steps (one gradient evaluation each); ``budget.seconds`` stops the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from adversary.case import Observation, Reconstruction
from adversary.distance import squared_l2, tag_distance
from adversary.engine import LABEL_STRATEGIES, Hook, MatchConfig, match
from adversary.optim import OptimizerSpec
from adversary.options import AttackOptions, Budget, choice
from adversary.registry import register


@dataclass(frozen=True)
class DlgOptions(AttackOptions):
    """``init``: a dummy init spec (``normal:STD``, ``uniform:R``, ``constant:V``); ``record_every``: steps between
    recorded decodings; ``snapshot_every`` > 0 keeps the dummy every that many steps; ``hooks`` run after each step."""

    lr: float = 1.0
    optimizer: str = choice("lbfgs", "lbfgs", "adam", "bert-adam")
    init: str = "normal:1"
    labels: str = choice("joint", *LABEL_STRATEGIES)
    record_every: int = 10
    snapshot_every: int = 0
    hooks: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class TagOptions(AttackOptions):
    """``init``: ``normal`` (std of the word embeddings), ``normal:STD`` or ``constant:VALUE``; ``tag_scale`` and
    ``scheme``: the L1 weight at the embeddings and how it falls with depth; ``warmup``: share of the steps the
    step size ramps up; ``clamp``: keep the dummy in the embeddings' range; ``decode``: nearest token by ``cos`` or
    ``l2``; ``keep``: the ``last`` iterate or the ``best`` (lowest distance)."""

    lr: float = 0.05
    init: str = "normal"
    tag_scale: float = 0.1
    scheme: str = choice("linear", "linear", "exp", "flat")
    warmup: float = 0.05
    labels: str = choice("joint", *LABEL_STRATEGIES)
    clamp: bool = True
    decode: str = choice("cos", "cos", "l2")
    keep: str = choice("last", "last", "best")
    record_every: int = 10
    snapshot_every: int = 0
    hooks: tuple[Hook, ...] = ()


@register("dlg", DlgOptions)
def dlg(observation: Observation, budget: Budget, seed: int, options: DlgOptions) -> Reconstruction:
    """Deep Leakage from Gradients on text: one L-BFGS step per iteration (one gradient evaluation each)."""
    o = options
    config = MatchConfig(distance=squared_l2, init=o.init, labels=o.labels, clamp=False,
                         optimizer=OptimizerSpec(o.optimizer, lr=o.lr, warmup=0.0, decay="none", max_grad_norm=0.0),
                         record_every=o.record_every, snapshot_every=o.snapshot_every)
    return match(observation, config, budget, seed=seed, hooks=o.hooks)


@register("tag", TagOptions)
def tag(observation: Observation, budget: Budget, seed: int, options: TagOptions) -> Reconstruction:
    """TAG (module doc)."""
    o = options
    config = MatchConfig(distance=tag_distance(o.tag_scale, o.scheme), init=o.init, labels=o.labels, clamp=o.clamp,
                         optimizer=OptimizerSpec("bert-adam", lr=o.lr, warmup=o.warmup, decay="linear"),
                         decode=o.decode, keep=o.keep, record_every=o.record_every,
                         snapshot_every=o.snapshot_every)
    return match(observation, config, budget, seed=seed, hooks=o.hooks)
