"""Server behaviour as stacked strategy wrappers (Flower's idiom): each wrapper takes the strategy it wraps.

``FedAvgWithLog`` is the base (plain FedAvg, plus a round log); ``PrivacyAccounting`` charges each client for the
defense it reports; ``CuriousServer`` attacks the updates on the side and owns its attacker's lifecycle. The
ServerApp stacks them ``CuriousServer(PrivacyAccounting(FedAvgWithLog(...)))`` and calls ``start`` on the top.
"""

from fedsim.strategies.accounting import PrivacyAccounting
from fedsim.strategies.base import (FedAvgWithLog, RunInterrupted, StrategyWrapper, aggregate_train_metrics,
                                    client_of, layer, metrics_of)
from fedsim.strategies.curious import TRUTH_KEY, AttackPlan, CuriousServer

__all__ = ["TRUTH_KEY", "AttackPlan", "CuriousServer", "FedAvgWithLog", "PrivacyAccounting", "RunInterrupted",
           "StrategyWrapper", "aggregate_train_metrics", "client_of", "layer", "metrics_of"]
