"""Server behaviour as stacked strategy wrappers (Flower's idiom): each wrapper takes the strategy it wraps.

``FedAvgWithLog`` is the base (plain FedAvg, plus a round log; ``FedAdamWithLog`` with ``--server-optimizer
fedadam:eta=ETA``); ``PrivacyAccounting`` charges each client for the
defense it reports; ``CuriousServer`` attacks the updates on the side and owns its attacker's lifecycle. The
ServerApp stacks them ``CuriousServer(PrivacyAccounting(FedAvgWithLog(...)))`` and calls ``start`` on the top.
With ``--secagg`` the stack sends through a ``SecAggGrid``: each round runs Flower's SecAgg+ and the stack
receives one reply, the unmasked aggregate.
"""

from fedsim.strategies.accounting import PrivacyAccounting
from fedsim.strategies.base import (SERVER_OPTIMIZERS, TRUTH_KEY, FedAdamWithLog, FedAvgWithLog, RoundLog,
                                    RunInterrupted, StrategyWrapper, aggregate_train_metrics, client_of, layer,
                                    metrics_of, parse_server_optimizer, server_strategy)
from fedsim.strategies.curious import AttackPlan, CuriousServer, aggregated_clients
from fedsim.strategies.secagg import AGGREGATE, SecAggGrid, SecAggProtocol

__all__ = ["AGGREGATE", "SERVER_OPTIMIZERS", "TRUTH_KEY", "AttackPlan", "CuriousServer", "FedAdamWithLog", "FedAvgWithLog",
           "PrivacyAccounting", "RoundLog", "RunInterrupted", "SecAggGrid", "SecAggProtocol", "StrategyWrapper", "aggregate_train_metrics",
           "aggregated_clients", "client_of", "layer", "metrics_of", "parse_server_optimizer",
           "server_strategy"]
