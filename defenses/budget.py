"""Privacy budgets in epsilon: the noise that makes a run end at (epsilon, delta), found before the run starts.

Users think in epsilon ("we may spend epsilon = 8"); DP-SGD and the Gaussian mechanism are set by sigma. A budget
spec (``dp:epsilon=E,c=C`` example-level, ``clip:c=C+noise:epsilon=E`` update-level, optional ``delta=D``) is
resolved once, with the run's numbers, into the sigma spec clients run (``dp:sigma=S,c=C``,
``clip:c=C+noise:sigma=S``). The accounting is the one ``defenses.accounting`` charges (RDP, add/remove one unit),
so the server's final epsilon equals E up to the calibration tolerance:

* example-level: ``steps`` = rounds x DP-SGD steps per round, each Poisson-subsampled at q = B/N;
* update-level: ``steps`` = rounds x defended releases per round (defenses run in every local step), q = 1.

The search is dp-accounting's ``calibrate_dp_mechanism`` (Brent's method on epsilon(multiplier)) over noise
multipliers in [``MIN_MULTIPLIER``, ``MAX_MULTIPLIER``]; a budget outside what that range reaches is a UsageError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dp_accounting
from dp_accounting import mechanism_calibration, rdp

from defenses.accounting import DEFAULT_DELTA, compute_epsilon, sample_rate
from defenses.specs import BUDGETS, Clip, Defense, DpSgd, DpSgdBudget, Noise, NoiseBudget, SpecsLike, parse_defenses
from fedsim.core.errors import UsageError

MIN_MULTIPLIER, MAX_MULTIPLIER = 1e-2, 1e4  # noise std / sensitivity searched; outside: no useful run
TOLERANCE = 0.01  # the calibrated run's epsilon is within 1 % of the target (checked, not assumed)


@dataclass(frozen=True)
class Calibration:
    """A budget resolved: the sigma spec to run and the numbers it was calibrated for (for summary.json)."""

    budget: str  # the setting as given, e.g. "dp:epsilon=8,c=1"
    specs: tuple[Defense, ...]  # the setting with sigma in place of epsilon
    sigma: float  # the value written in the resolved spec: dp's noise multiplier, noise's std
    noise_multiplier: float  # noise std / sensitivity
    target_epsilon: float
    epsilon: float  # what the accountant gives for the resolved spec over ``steps``
    delta: float
    steps: int  # DP-SGD steps (example-level) or releases (update-level) the budget covers
    sample_rate: float
    explanation: str

    @property
    def resolved(self) -> str:
        return "+".join(str(d) for d in self.specs)

    def facts(self) -> dict[str, Any]:
        """What a run's summary.json records about the calibration."""
        return {"defense_budget": self.budget, "defense_resolved": self.resolved, "calibrated_sigma": self.sigma,
                "calibrated_noise_multiplier": self.noise_multiplier, "target_epsilon": self.target_epsilon,
                "calibration": self.explanation}


def has_budget(specs: SpecsLike) -> bool:
    """Whether the setting holds an epsilon budget still to be resolved."""
    return any(isinstance(d, BUDGETS) for d in parse_defenses(specs))


def resolve_budget(specs: SpecsLike, rounds: int, steps_per_round: int, batch_size: int, shard_size: int,
                   delta: float | None = None) -> Calibration | None:
    """The setting with its epsilon budget replaced by the sigma that spends exactly that budget; None without one.

    ``steps_per_round``: how many times the defense runs on a client's data per round (FedSGD 1, FedAvg E).
    ``shard_size``: the smallest client shard (largest q), so no client ends above E. ``delta``: used when the spec
    gives none (default 1e-5). An impossible budget raises UsageError (one line).
    """
    defenses = parse_defenses(specs)
    budget = next((d for d in defenses if isinstance(d, BUDGETS)), None)
    if budget is None:
        return None
    if rounds < 1 or steps_per_round < 1:
        raise UsageError(f"rounds and steps per round must be positive, got {rounds} and {steps_per_round}")
    delta = budget.delta or (DEFAULT_DELTA if delta is None else delta)
    if not 0 < delta < 1:
        raise UsageError(f"delta must be in (0, 1), got {delta!r}")
    name = "+".join(str(d) for d in defenses)
    steps = rounds * steps_per_round
    example = isinstance(budget, DpSgdBudget)
    q = sample_rate(batch_size, shard_size) if example else 1.0
    z = _calibrate(budget.epsilon, delta, q, steps, name)
    if example:
        sigma = _round(z)
        resolved = DpSgd(sigma, budget.c)
        unit = (f"example-level: {steps} DP-SGD step(s) ({rounds} round(s) x {steps_per_round}), Poisson rate "
                f"q = B/N = {batch_size}/{shard_size} = {q:.4g} (the smallest shard: no client exceeds the budget)")
    else:
        index = defenses.index(budget)
        bound = min(d.c for d in defenses[:index] if isinstance(d, Clip))
        sigma = _round(z * bound)
        resolved = Noise(sigma)
        unit = f"update-level: {steps} release(s) ({rounds} round(s) x {steps_per_round}), clip {bound:g}, q = 1"
    out = tuple(resolved if d is budget else d for d in defenses)
    eps, _ = compute_epsilon(list(out), batch_size, shard_size, steps, delta)
    if not abs(eps - budget.epsilon) <= TOLERANCE * budget.epsilon:  # guards the search, and the rounding of sigma
        raise UsageError(f"cannot calibrate {name!r}: the nearest sigma {sigma:g} gives epsilon {eps:.4g}, not "
                         f"{budget.epsilon:g} within {TOLERANCE:.0%}")
    explanation = (f"{name} -> {'+'.join(map(str, out))}: noise multiplier {sigma if example else z:.4g} spends "
                   f"epsilon {eps:.4g} at delta {delta:g} (RDP), {unit}")
    return Calibration(name, out, sigma, sigma if example else sigma / bound, budget.epsilon, eps, delta, steps, q,
                       explanation)


def resolve_specs(specs: SpecsLike, rounds: int, steps_per_round: int, batch_size: int, shard_size: int,
                  delta: float | None = None) -> tuple[Defense, ...]:
    """``resolve_budget``'s specs, or the setting unchanged when it holds no budget."""
    calibration = resolve_budget(specs, rounds, steps_per_round, batch_size, shard_size, delta)
    return parse_defenses(specs) if calibration is None else calibration.specs


def _calibrate(target: float, delta: float, q: float, steps: int, name: str) -> float:
    """The noise multiplier whose ``steps``-fold Gaussian (Poisson-sampled at q < 1) has epsilon ``target``."""
    def event(z: float) -> dp_accounting.DpEvent:
        gaussian = dp_accounting.GaussianDpEvent(z)
        one = gaussian if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
        return dp_accounting.SelfComposedDpEvent(one, steps)

    def epsilon(z: float) -> float:
        return float(rdp.RdpAccountant().compose(event(z)).get_epsilon(delta))

    low, high = epsilon(MAX_MULTIPLIER), epsilon(MIN_MULTIPLIER)
    if not low <= target <= high:
        raise UsageError(f"no noise can make {name!r} end at epsilon {target:g}: over {steps} step(s) at q = {q:.4g}, "
                         f"delta {delta:g}, noise multipliers {MIN_MULTIPLIER:g}..{MAX_MULTIPLIER:g} give epsilon "
                         f"{low:.3g}..{high:.3g}")
    try:
        return float(mechanism_calibration.calibrate_dp_mechanism(
            rdp.RdpAccountant, event, target, delta,
            mechanism_calibration.ExplicitBracketInterval(MIN_MULTIPLIER, MAX_MULTIPLIER), tol=1e-9))
    except (ValueError, mechanism_calibration.NoBracketIntervalFoundError) as exc:
        raise UsageError(f"cannot calibrate {name!r} to epsilon {target:g}: {exc}") from None


def _round(value: float) -> float:
    """Six significant digits: what the resolved spec's text carries to clients, so reports match what ran."""
    return float(f"{value:.6g}")
