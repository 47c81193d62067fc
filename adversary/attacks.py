"""DLG and TAG as configurations of the gradient-matching engine.

DLG (Zhu et al., 2019): squared L2 between gradients, dummy inputs and soft labels optimised jointly from a
standard-normal start with L-BFGS. TAG (Deng et al., 2021): L2 plus a per-layer weighted L1 term that weighs the
front layers more, BertAdam with lr 0.05 and warm-up/linear decay, a dummy started from a normal distribution (at
the word embeddings' own scale unless told otherwise) or a constant and kept inside the embeddings' range.
"""

from __future__ import annotations

from adversary.case import Observation, Reconstruction
from adversary.engine import Hook, MatchConfig, match
from adversary.objectives import squared_l2, tag_distance
from adversary.optim import OptimizerSpec
from adversary.registry import register


@register("dlg")
def dlg(observation: Observation, *, iterations: int = 1000, seed: int = 0, lr: float = 1.0,
        optimizer: str = "lbfgs", init: str = "normal:1", labels: str = "joint", record_every: int = 10,
        snapshot_every: int = 0, hooks: tuple[Hook, ...] = ()) -> Reconstruction:
    """Deep Leakage from Gradients on text: one L-BFGS step per iteration (one gradient evaluation each)."""
    config = MatchConfig(distance=squared_l2, init=init, labels=labels, clamp=False,
                         optimizer=OptimizerSpec(optimizer, lr=lr, warmup=0.0, decay="none", max_grad_norm=0.0),
                         record_every=record_every, snapshot_every=snapshot_every)
    return match(observation, config, iterations=iterations, seed=seed, hooks=hooks)


@register("tag")
def tag(observation: Observation, *, iterations: int = 1000, seed: int = 0, lr: float = 0.05,
        init: str = "normal", tag_scale: float = 0.1, scheme: str = "linear", warmup: float = 0.05,
        labels: str = "joint", clamp: bool = True, decode: str = "cos", keep: str = "last",
        record_every: int = 10, snapshot_every: int = 0, hooks: tuple[Hook, ...] = ()) -> Reconstruction:
    """TAG. ``init``: ``normal`` (std of the word embeddings), ``normal:STD`` or ``constant:VALUE``."""
    config = MatchConfig(distance=tag_distance(tag_scale, scheme), init=init, labels=labels, clamp=clamp,
                         optimizer=OptimizerSpec("bert-adam", lr=lr, warmup=warmup, decay="linear"),
                         decode=decode, keep=keep, record_every=record_every, snapshot_every=snapshot_every)
    return match(observation, config, iterations=iterations, seed=seed, hooks=hooks)
