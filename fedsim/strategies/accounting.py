"""Privacy accounting from what each client reports it ran, as a strategy wrapper.

A client puts its round's mechanism in its reply's metrics (``defenses.Release``: noise multiplier, sample rate,
steps, unit as a code). ``PrivacyAccounting`` composes each client's releases (keyed by partition id) with
``defenses.Accountant``, so:

* a client whose round failed sent nothing and is not charged;
* a client that reports no mechanism (no report, or a defense with no finite guarantee) is *unprotected*: its
  epsilon is inf from then on, and the round names it;
* the round's epsilon is the largest over the clients so far (the weakest guarantee any client has).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from defenses import DEFAULT_DELTA, Accountant, Release
from fedsim.strategies.base import StrategyWrapper, client_of, metrics_of


class PrivacyAccounting(StrategyWrapper):
    """Charges each client for the releases it reports; ``rounds[r]`` holds round r's epsilon, each client's
    epsilon so far, who was charged and who was unprotected. Aggregation is the wrapped strategy's, unchanged."""

    def __init__(self, strategy: Strategy, delta: float = DEFAULT_DELTA, method: str = "rdp") -> None:
        super().__init__(strategy)
        self.delta = delta
        self.method = method
        self.accountants: dict[int, Accountant] = {}
        self.rounds: dict[int, dict[str, Any]] = {}
        self.unprotected: set[int] = set()  # every client that has sent an update without a finite guarantee

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        charged, unprotected = [], []
        for reply in replies:
            metrics = metrics_of(reply)
            if metrics is None:  # a failed client released nothing this round
                continue
            client = client_of(reply)
            release = Release.from_metrics(metrics)
            accountant = self.accountants.setdefault(client, Accountant(self.method))
            if release is None or not release.private:
                unprotected.append(client)
                self.unprotected.add(client)
                accountant.step(0.0, 1.0, 1)  # an update with no guarantee: epsilon = inf for good
            else:
                accountant.step(release.noise_multiplier, release.sample_rate, release.steps)
            charged.append(client)
        clients = {c: a.get_epsilon(self.delta) for c, a in sorted(self.accountants.items())}
        self.rounds[server_round] = {"epsilon": max(clients.values(), default=0.0), "clients": clients,
                                     "charged": sorted(charged), "unprotected": sorted(unprotected)}
        return self.strategy.aggregate_train(server_round, replies)

    def epsilon(self, server_round: int) -> float | None:
        """Round ``server_round``'s epsilon (None before the first round)."""
        entry = self.rounds.get(server_round)
        return None if entry is None else entry["epsilon"]

