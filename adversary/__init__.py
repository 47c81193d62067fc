"""The adversary: gradient-inversion attacks on transformer classifiers and the metrics that score them.

Threat-model boundary (as in breaching): an attack receives an :class:`~adversary.case.Observation` (model and
weights, the gradient, public facts) and returns a :class:`~adversary.case.Reconstruction`. Ground truth lives in
:class:`~adversary.case.GroundTruth` and only the scoring code in :mod:`adversary.metrics` ever reads it.
Every attack is called the same way: ``attack(observation, budget, seed, options)`` (:mod:`adversary.registry`).
"""

from adversary.case import GroundTruth, Observation, Reconstruction
from adversary.options import AttackOptions, Budget
from adversary.registry import ATTACKS, attack_options, get_attack, run_attack

__all__ = ["Observation", "GroundTruth", "Reconstruction", "Budget", "AttackOptions", "ATTACKS", "attack_options",
           "get_attack", "run_attack"]
