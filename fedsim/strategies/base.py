"""FedAvg with a round log, and the wrapper base every server behaviour is stacked with (Flower's idiom).

A wrapper holds the strategy it wraps (``self.strategy``) and delegates every Strategy method it does not change,
like Flower's own DP wrappers. ``start`` runs on the outermost wrapper (``Strategy.start`` calls back into
``self``), so each wrapper's whole-run hook, ``running()``, is entered there, nested from the outside in: a wrapper
that owns a resource (the curious server's attacker) sets it up, finishes or cancels it around the rounds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, Result, Strategy

from fedsim.core.server_optimizer import SERVER_OPTIMIZERS, parse_server_optimizer


TRUTH_KEY = "truth"  # the scoring channel's record in a client reply (fedsim.client_app module doc)


class RunInterrupted(Exception):
    """The user stopped the run; what was recorded so far stays on disk."""


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Train loss averaged over examples, examples summed, and how many clients took part."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = np.array([float(m[weighted_by_key]) for m in metrics])
    losses = np.array([float(m["train-loss"]) for m in metrics])
    return MetricRecord({"train-loss": float((weights * losses).sum() / weights.sum()),
                         weighted_by_key: int(weights.sum()), "clients": len(metrics)})


def metrics_of(msg: Message) -> MetricRecord | None:
    """A reply's (single) MetricRecord; None for a failed reply, which has no content."""
    if msg.has_error() or not msg.content.metric_records:
        return None
    return next(iter(msg.content.metric_records.values()))


def client_of(msg: Message) -> int:
    """The client's partition id (node ids are random); -1 for a failed reply, which has no content."""
    metrics = metrics_of(msg)
    return -1 if metrics is None else int(metrics.get("client", -1))


class RoundLog:
    """Mixed into a Flower strategy: replies aggregated in client order (a seed then fixes the floating-point sum),
    and, per round, the aggregated train metrics and the clients that failed, so the run can report them."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("train_metrics_aggr_fn", aggregate_train_metrics)
        super().__init__(**kwargs)
        self.rounds: dict[int, dict] = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = sorted(replies, key=lambda m: (client_of(m), m.metadata.src_node_id))
        failed = [{"node": int(m.metadata.src_node_id), "reason": str(m.error.reason)} for m in replies if m.has_error()]
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.rounds[server_round] = {"metrics": dict(metrics) if metrics is not None else {}, "failed": failed}
        return arrays, metrics


class FedAvgWithLog(RoundLog, FedAvg):
    """FedAvg (the new weights are the clients' mean), with the round log."""


class FedAdamWithLog(RoundLog, FedAdam):
    """FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization"): the clients' mean update is a pseudo-gradient
    for Adam on the server, which fine-tunes a pretrained transformer in far fewer rounds than FedAvg's plain step.
    The clients still run plain SGD from the weights they are sent, so what a client reveals is unchanged.

    Flower's Adam step returns float64 arrays (a NumPy float64 scalar times float32 arrays); the new weights are cast
    back to the model's dtype, so that every client, the server's evaluation and the curious server hold the same
    float32 weights (a float64 global made every coordinate of every derived update differ by its float32 rounding:
    the whole vocabulary looked used)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        dtypes = {k: a.dtype for k, a in self.current_arrays.items()} if self.current_arrays else {}
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or not dtypes:
            return arrays, metrics
        return ArrayRecord({k: Array(np.asarray(a.numpy(), dtype=dtypes.get(k, a.dtype)))
                            for k, a in arrays.items()}), metrics


def server_strategy(spec: str, client_lr: float = 0.1, **kwargs) -> RoundLog:
    """The base strategy a ``--server-optimizer`` spec names, with the round log (``kwargs``: Flower's FedAvg ones;
    ``client_lr`` only labels Flower's log of FedAdam, whose clients train with their own lr).

    Adam's epsilon defaults to torch's 1e-8, not Flower's 1e-3: fine-tuning moves a weight by ~1e-5 per round, and
    an epsilon above that turns Adam back into a (slower) plain step."""
    name, params = parse_server_optimizer(spec)
    if name == "fedavg":
        return FedAvgWithLog(**kwargs)
    return FedAdamWithLog(eta=params["eta"], eta_l=client_lr, tau=params["tau"], beta_1=0.9, beta_2=0.99,
                          **kwargs)


class StrategyWrapper(Strategy):
    """A strategy around another: every Strategy method delegates; subclasses override what they change."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Entered around the whole run; the default only enters the wrapped strategy's own hook."""
        inner = getattr(self.strategy, "running", None)
        with inner() if inner is not None else contextlib.nullcontext():
            yield

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        with self.running():
            return super().start(grid=grid, initial_arrays=initial_arrays, num_rounds=num_rounds, timeout=timeout,
                                 train_config=train_config, evaluate_config=evaluate_config,
                                 evaluate_fn=evaluate_fn)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


S = TypeVar("S", bound=Strategy)


def layer(strategy: Strategy, kind: type[S]) -> S | None:
    """The first strategy of type ``kind`` in a stack, from the outside in (None when the stack has none)."""
    while strategy is not None:
        if isinstance(strategy, kind):
            return strategy
        strategy = getattr(strategy, "strategy", None) if isinstance(strategy, StrategyWrapper) else None
    return None
