"""Privacy accounting: which Gaussian mechanism a defense setting is, and its (epsilon, delta) via dp-accounting.

All the math lives in dp-accounting; this module only decides which event a spec list is. Relation: add or
remove one unit (dp-accounting's default), where the unit is

* ``dp:sigma=S,c=C`` (DP-SGD): one example of the client's shard. Each step is a Poisson-subsampled Gaussian with
  noise multiplier S and rate q = B/N, composed over the client's DP-SGD steps. Transforms after it are
  post-processing and cost nothing.
* ``clip:c=C`` then ``noise:sigma=S``: the client's whole contribution to one released update (client-level DP
  on that update; for FedSGD, its batch). The update has norm <= C, so sensitivity C and multiplier S/C, with no
  subsampling (q = 1), composed over the releases (defended updates) the client sent. Consecutive noise specs
  add in variance; pruning before the noise keeps the norm bound; everything after is post-processing.
* ``dp:epsilon=E,c=C`` and ``clip:c=C+noise:epsilon=E`` are budgets, not mechanisms: ``defenses.budget`` resolves
  them into the sigma specs above (whose epsilon over the run is E) before anything here sees them.
* noise with no clip before it: the gradient's norm is unbounded, so no noise level gives a finite epsilon: inf.
  Clipping or pruning alone is deterministic: inf as well.

In a federation each client reports what it ran in a round as a :class:`Release` (numbers only, the same keys from
every client); the server composes those per client with :class:`Accountant`, so it charges what actually ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import dp_accounting
from dp_accounting import pld, rdp

from defenses.specs import Clip, DpSgd, Noise, SpecsLike, format_defenses, parse_defenses, unresolved_budget
from fedsim.core.errors import UsageError

DEFAULT_DELTA = 1e-5
METHODS = ("rdp", "pld")


class Accountant:
    """Opacus-style accountant: ``step`` for each noisy release, ``get_epsilon`` for the composition so far.

    ``noise_multiplier`` is noise std over sensitivity; 0 means nothing bounds the release (epsilon = inf).
    ``method``: ``rdp`` (Renyi DP, what Opacus and most papers report) or ``pld`` (privacy loss distributions,
    tighter).
    """

    def __init__(self, method: str = "rdp") -> None:
        if method not in METHODS:
            raise UsageError(f"unknown accountant {method!r}; accepted: {', '.join(METHODS)}")
        self.method = method
        self.history: list[tuple[float, float, int]] = []  # (noise_multiplier, sample_rate, num_steps)
        self._inner: dp_accounting.PrivacyAccountant = rdp.RdpAccountant() if method == "rdp" else pld.PLDAccountant()

    def step(self, noise_multiplier: float, sample_rate: float, num_steps: int = 1) -> None:
        """Record ``num_steps`` releases of a Gaussian with this multiplier, each Poisson-sampled at ``sample_rate``."""
        if not noise_multiplier >= 0 or not 0 <= sample_rate <= 1 or num_steps < 0:
            raise UsageError(f"bad accountant step: noise_multiplier={noise_multiplier} (>= 0), "
                             f"sample_rate={sample_rate} (in [0, 1]), num_steps={num_steps} (>= 0)")
        if num_steps == 0:
            return
        self.history.append((noise_multiplier, sample_rate, num_steps))
        self._inner.compose(_event(noise_multiplier, sample_rate), num_steps)

    def get_epsilon(self, delta: float = DEFAULT_DELTA) -> float:
        """Epsilon of everything recorded at this delta (0 before any step, inf when a step was unbounded)."""
        _check_delta(delta)
        return float(self._inner.get_epsilon(delta))


@dataclass(frozen=True)
class Mechanism:
    """What one application of a defense setting is, privacy-wise."""
    noise_multiplier: float  # noise std / sensitivity; 0: no finite guarantee
    sample_rate: float  # q of each step: B/N for dp:, 1 for an update-level release
    unit: str  # what one (epsilon, delta) protects: "example", "update", or "none"
    explanation: str  # one line: what the mechanism is, or why there is none

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    def release(self, steps: int) -> "Release":
        """This mechanism run ``steps`` times on the client's data (one round of one client)."""
        return Release(self.noise_multiplier, self.sample_rate, steps, self.unit)


# --- what a client reports it did: numbers only (a Flower MetricRecord), the same keys for every client ----------
UNITS = ("none", "example", "update")  # the privacy-unit code is the index
REPORT_KEYS = ("privacy-noise-multiplier", "privacy-sample-rate", "privacy-steps", "privacy-unit")


@dataclass(frozen=True)
class Release:
    """What a client did in one round, privacy-wise, as it reports it: the server accounts from this, so a client
    that failed is not charged and one that ran no defense shows up as unprotected."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    unit: str  # one of UNITS

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0 and self.unit != "none"

    def to_metrics(self) -> dict[str, float | int]:
        return {"privacy-noise-multiplier": float(self.noise_multiplier),
                "privacy-sample-rate": float(self.sample_rate), "privacy-steps": int(self.steps),
                "privacy-unit": UNITS.index(self.unit)}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> "Release | None":
        """The release a reply reports; None when the report is missing or malformed (the client is unprotected)."""
        try:
            z, q, steps, code = (metrics[k] for k in REPORT_KEYS)
            z, q, steps, code = float(z), float(q), int(steps), int(code)
        except (KeyError, TypeError, ValueError):
            return None
        if not (z >= 0 and 0 <= q <= 1 and steps >= 0 and 0 <= code < len(UNITS)):  # NaN fails too
            return None
        return cls(z, q, steps, UNITS[code])


def mechanism(specs: SpecsLike, batch_size: int = 1, shard_size: int | None = None) -> Mechanism:
    """The Gaussian mechanism a defense setting applies each time it runs (see the module docstring)."""
    defenses = unresolved_budget(parse_defenses(specs))
    name = format_defenses(defenses)
    if not defenses:
        return Mechanism(0.0, 1.0, "none", "no defense: updates leave the client as computed, epsilon = inf")
    first = defenses[0]
    if isinstance(first, DpSgd):
        q = sample_rate(batch_size, shard_size)
        if first.sigma == 0:
            return Mechanism(0.0, q, "none", f"{name}: DP-SGD with sigma=0 adds no noise, epsilon = inf")
        return Mechanism(first.sigma, q, "example",
                         f"{name}: DP-SGD, per-example clip {first.c:g}, noise multiplier {first.sigma:g}, "
                         f"Poisson rate q = B/N = {batch_size}/{shard_size or batch_size} = {q:.4g}; protects each "
                         f"example of the client's shard")
    bound, std, post = math.inf, 0.0, False
    for d in defenses:
        if isinstance(d, Noise):
            std = math.hypot(std, d.sigma)
        elif std > 0:
            post = True  # everything after the first noise is post-processing of a noisy release
            break
        elif isinstance(d, Clip):
            bound = min(bound, d.c)
    tail = "; later transforms are post-processing" if post else ""
    if std == 0:
        return Mechanism(0.0, 1.0, "none", f"{name}: no noise, the release is a deterministic function of the "
                                           f"data, epsilon = inf")
    if math.isinf(bound):
        return Mechanism(0.0, 1.0, "none", f"{name}: noise without a clip before it; the gradient's sensitivity is "
                                           f"unbounded, so no finite epsilon holds (epsilon = inf){tail}")
    z = std / bound
    return Mechanism(z, 1.0, "update",
                     f"{name}: update-level Gaussian mechanism, norm bound {bound:g}, noise std {std:g}, "
                     f"multiplier {z:.4g}; protects the client's whole contribution to each released update "
                     f"(client-level){tail}")


class ClientPrivacy:
    """One client's running (epsilon, delta) in a federation: ``record`` the steps of each round it took part in.

    For ``rounds.jsonl``: keep one per client (partition id); after each round it trained in, call
    ``record(steps)`` with the number of times the defense ran on its data that round (DP-SGD steps for ``dp:``,
    1 for an update defended once, local steps when update-level defenses run in every local step).
    """

    def __init__(self, specs: SpecsLike, batch_size: int, shard_size: int, delta: float = DEFAULT_DELTA,
                 method: str = "rdp") -> None:
        _check_delta(delta)
        self.mechanism = mechanism(specs, batch_size, shard_size)
        self.delta = delta
        self.accountant = Accountant(method)
        self.steps = 0

    def record(self, steps: int) -> float:
        """Add ``steps`` applications and return epsilon over everything so far."""
        self.accountant.step(self.mechanism.noise_multiplier, self.mechanism.sample_rate, steps)
        self.steps += steps
        return self.epsilon

    @property
    def epsilon(self) -> float:
        return self.accountant.get_epsilon(self.delta)

    @property
    def explanation(self) -> str:
        return self.mechanism.explanation


def sample_rate(batch_size: int, shard_size: int | None) -> float:
    """q = B/N, the chance an example of the client's shard is in one DP-SGD batch."""
    shard_size = batch_size if shard_size is None else shard_size
    if batch_size < 1 or shard_size < 1:
        raise UsageError(f"batch size and shard size must be positive, got {batch_size} and {shard_size}")
    return min(1.0, batch_size / shard_size)


def compute_epsilon(specs: SpecsLike, batch_size: int, shard_size: int, steps: int, delta: float = DEFAULT_DELTA,
                    method: str = "rdp") -> tuple[float, str]:
    """(epsilon, explanation) for a client that ran the defense ``steps`` times.

    ``steps`` counts applications on this client's data: DP-SGD steps for ``dp:``, defended releases (FedSGD
    gradients, or FedAvg updates defended once per round) for update-level settings.
    """
    m = mechanism(specs, batch_size, shard_size)
    acc = Accountant(method)
    acc.step(m.noise_multiplier, m.sample_rate, steps)
    eps = acc.get_epsilon(delta) if steps > 0 else 0.0
    if m.private:
        return eps, f"{m.explanation}; {method.upper()} over {steps} step(s), delta={delta:g}: epsilon={eps:.4g}"
    return math.inf if steps > 0 else 0.0, m.explanation


def single_release_epsilon(specs: SpecsLike, delta: float = DEFAULT_DELTA) -> tuple[float, str]:
    """The seed paper's bound: one release of the Gaussian mechanism (no sampling, no composition).

    Uses dp-accounting's analytic ``get_epsilon_gaussian`` (Balle and Wang 2018) with the setting's multiplier;
    for ``dp:`` this is one step's noisy sum (sensitivity C) without subsampling amplification.
    """
    _check_delta(delta)
    m = mechanism(specs)
    if not m.private:
        return math.inf, m.explanation
    eps = float(dp_accounting.get_epsilon_gaussian(m.noise_multiplier, delta))
    return eps, (f"single Gaussian release, multiplier {m.noise_multiplier:.4g}, delta={delta:g}: "
                 f"epsilon={eps:.4g} (analytic Gaussian mechanism)")


def _event(noise_multiplier: float, q: float) -> dp_accounting.DpEvent:
    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    if q == 0 or math.isinf(noise_multiplier):
        return dp_accounting.NoOpDpEvent()
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return gaussian if q == 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise UsageError(f"delta must be in (0, 1), got {delta!r}")
