"""Client-side defenses against the curious server, and what they cost in privacy terms.

Specs (``noise:sigma=S``, ``clip:c=C``, ``dp:sigma=S,c=C``, ``prune:p=P``, ``none``) compose in order; the budgets
``dp:epsilon=E,c=C`` and ``clip:c=C+noise:epsilon=E`` are resolved into sigma specs by ``resolve_budget`` first. A client
applies them in each local gradient step with ``build_gradient_fn`` (the only path in the federation: DP-SGD needs
the per-example gradients inside the step), or to a finished update with ``defend_update``. Account for them with
``compute_epsilon`` / ``ClientPrivacy``, or from what a client reports it ran (``Release``) with ``Accountant``.
"""

from defenses.accounting import (DEFAULT_DELTA, REPORT_KEYS, UNITS, Accountant, ClientPrivacy, Mechanism, Release,
                                 compute_epsilon, mechanism, sample_rate, single_release_epsilon)
from defenses.budget import Calibration, has_budget, resolve_budget, resolve_specs
from defenses.dpsgd import clipped_gradient_sum, dp_sgd_gradients, per_example_gradients
from defenses.gradient import DefendedGradient, GradientFn, build_gradient_fn
from defenses.specs import (ACCEPTED, BUDGETS, Clip, Defense, DpSgd, DpSgdBudget, Noise, NoiseBudget, Prune,
                            format_defenses, parse_defense, parse_defenses)
from defenses.transforms import add_noise, clip_update, defend_update, global_norm, make_generator, prune_update

__all__ = [
    "ACCEPTED", "BUDGETS", "DEFAULT_DELTA", "REPORT_KEYS", "UNITS", "Accountant", "Calibration", "Clip",
    "ClientPrivacy", "Defense", "DefendedGradient", "DpSgd", "DpSgdBudget", "NoiseBudget", "has_budget",
    "resolve_budget", "resolve_specs", "GradientFn", "Mechanism", "Noise", "Prune", "Release", "add_noise",
    "build_gradient_fn", "clip_update", "clipped_gradient_sum", "compute_epsilon", "defend_update",
    "dp_sgd_gradients", "format_defenses", "global_norm", "make_generator", "mechanism", "parse_defense",
    "parse_defenses", "per_example_gradients", "prune_update", "sample_rate", "single_release_epsilon",
]
