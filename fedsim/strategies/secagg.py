"""Secure aggregation (Flower's SecAgg+) as a transport: the strategies see nothing but the unmasked sum.

``SecAggGrid(grid, protocol)`` wraps the Grid the strategy stack sends through (``--secagg``). A round's train
messages, as the Message-API strategy built them, do not go to the clients as they are: the grid runs Flower's own
``SecAggPlusWorkflow`` (setup, key sharing, masked collection, unmasking: real key agreement, Shamir shares and
masks) over the wrapped grid, with a one-round legacy strategy (``_OneRound``, the interface the workflow drives)
that hands it those messages as FitIns and takes back the unmasked aggregate. ``send_and_receive`` then answers
with ONE reply, the aggregate as weights, whose metrics say how many clients are in it
(``clients-in-aggregate``). Every other message passes through unchanged. So ``CuriousServer`` and FedAvg above
it never see an individual update: there is none in the server process.

Clients send updates ``w_client - w_global`` (float64, exact), not weights (``fedsim.client_app.secagg_mod``):
the protocol clips each value to ``±clipping_range`` and rounds it stochastically to a grid of step
``2 clipping_range / quantization_range``. An update is ``lr |g|`` (at most ~0.06 measured here, at lr 0.1),
while weights reach 7.9 in MiniLM, next to Flower's default range of 8: on updates the same grid is a far finer
one. The rounding is unbiased (FedAvg unchanged in expectation) unless a value is clipped; clients count what
they clip (``secagg-clipped``, summed in the aggregate's metrics).

The rounding error is a public fact of the protocol: :meth:`SecAggProtocol.error_bound` bounds its Frobenius norm
per tensor, which the curious server adds to the gradient's published error bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, parameters_to_ndarrays
from flwr.server import ServerConfig
from flwr.server import strategy as legacy
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from defenses import REPORT_KEYS, Release
from fedsim.strategies.base import TRUTH_KEY

AGGREGATE = -1  # the ``client`` of the aggregate reply: all of them
NAMES_KEY = "secagg-names"  # FitIns config: the arrays' names (legacy Parameters have none)
CLIP_KEY = "secagg-clipping-range"  # FitIns config: clients count the values the protocol will clip


@dataclass(frozen=True)
class SecAggProtocol:
    """SecAgg+'s public parameters. ``max_weight``: what a client reports as ``num-examples`` (B x E), so that
    Flower's weight factor is exactly 1 and costs no precision (its default, 1000, would scale the update by
    B/1000 before quantising it). Every client is every other's neighbour (``num_shares`` 1.0: all); half of them
    (at least 2) reconstruct a dropped client's masks."""

    clipping_range: float
    quantization_range: int
    max_weight: float
    modulus_range: int = 2**32

    @property
    def step(self) -> float:
        """The quantisation grid's step on an update value."""
        return 2 * self.clipping_range / self.quantization_range

    def workflow(self, timeout: float | None = None) -> SecAggPlusWorkflow:
        return SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.5, max_weight=self.max_weight,
                                  clipping_range=self.clipping_range, quantization_range=self.quantization_range,
                                  modulus_range=self.modulus_range, timeout=timeout)

    def error_bound(self, numel: int, clients: int) -> float:
        """Bound on ||E||_F of the *sum* of ``clients`` updates' rounding errors over a tensor of ``numel``
        values (leave out values that are 0 in every update: 0 lies on the grid and is sent exactly). Each
        value's error is unbiased, below one step s, with variance <= s^2/4, independently:
        so
        E||E||^2 <= n K s^2 / 4 with standard deviation <= s^2 sqrt(n (K/4 + 3 K^2/16)); the bound is that mean
        plus four standard deviations, or the worst case K s sqrt(n) when that is smaller. (Clipped values are
        not covered: clients report them.)"""
        s, n, k = self.step, numel, clients
        likely = math.sqrt(n * k * s * s / 4 + 4 * s * s * math.sqrt(n * (k / 4 + 3 * k * k / 16)))
        return min(likely, k * s * math.sqrt(n))


class SecAggGrid:
    """A Grid whose train rounds run under SecAgg+ (module doc); everything else is delegated to ``grid``."""

    def __init__(self, grid: Grid, protocol: SecAggProtocol) -> None:
        self.grid, self.protocol = grid, protocol
        self.rounds: dict[int, dict[str, Any]] = {}  # per round: clients in the aggregate, values clipped

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = list(messages)
        if not messages or any(m.metadata.message_type != MessageType.TRAIN or "arrays" not in m.content
                               for m in messages):
            return self.grid.send_and_receive(messages, timeout=timeout)
        return [self.secure_round(messages, timeout)]

    def secure_round(self, messages: list[Message], timeout: float | None = None) -> Message:
        """One round of SecAgg+ over the clients these messages address; the aggregate as a single reply."""
        arrays: ArrayRecord = messages[0].content["arrays"]  # the global weights, the same in every message
        config = dict(messages[0].content["config"])
        server_round = int(config["server-round"])
        config.update({NAMES_KEY: list(arrays.keys()), CLIP_KEY: float(self.protocol.clipping_range)})
        one_round = _OneRound([m.metadata.dst_node_id for m in messages], config)
        context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                                config=ServerConfig(num_rounds=1), strategy=one_round,
                                client_manager=SimpleClientManager())
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = arrays
        tap = _TruthTap(self.grid)
        self.protocol.workflow(timeout)(tap, context)
        if not one_round.results:
            reasons = "; ".join(str(f) for f in one_round.failures) or "too few clients answered"
            return Message(Error(code=0, reason=f"SecAgg+ halted in round {server_round}: {reasons}"),
                           reply_to=messages[0])
        fitres = [res for _, res in one_round.results]
        metrics = aggregate_metrics([res.metrics for res in fitres])
        self.rounds[server_round] = {"clients": len(fitres), "clipped": int(metrics["secagg-clipped"])}
        mean_update = parameters_to_ndarrays(fitres[0].parameters)  # the same unmasked aggregate in every FitRes
        weights = {}
        for (name, value), update in zip(arrays.to_torch_state_dict().items(), mean_update, strict=True):
            weights[name] = (value.double() + torch.from_numpy(np.asarray(update, dtype=np.float64))
                             .reshape(value.shape)).to(value.dtype)
        content = RecordDict({"arrays": ArrayRecord(weights), "metrics": metrics})
        clients = [int(m["client"]) for m in (res.metrics for res in fitres)]
        if tap.truth:  # the scoring channel: the union of every client's examples, in client order
            union = [i for c in sorted(tap.truth) for i in tap.truth[c]]
            content[TRUTH_KEY] = ConfigRecord({"indices": union, "clients": sorted(clients)})
        return Message(content=content, reply_to=messages[0])  # the aggregate has no single sender


def aggregate_metrics(per_client: list[dict[str, Any]]) -> MetricRecord:
    """The aggregate's metrics from the clients' plain-text ones (SecAgg+ masks the update, not these): examples
    and clipped values summed, train loss weighted by examples, the count of clients, and the privacy report of
    the weakest client (no finite guarantee first, then the largest sample rate: the same noise and steps with a
    higher rate cost more epsilon), so the server's accounting charges the aggregate for its weakest member."""
    examples = [int(m["num-examples"]) for m in per_client]
    loss = sum(float(m["train-loss"]) * n for m, n in zip(per_client, examples)) / max(sum(examples), 1)
    weakest = min(per_client, key=_strength)
    return MetricRecord({"num-examples": sum(examples), "train-loss": loss, "client": AGGREGATE,
                         "clients-in-aggregate": len(per_client),
                         "secagg-clipped": sum(int(m.get("secagg-clipped", 0)) for m in per_client),
                         **{k: weakest[k] for k in REPORT_KEYS if k in weakest}})


def _strength(metrics: dict[str, Any]) -> tuple:
    release = Release.from_metrics(metrics)
    if release is None or not release.private:
        return (0,)
    return (1, -release.sample_rate, release.noise_multiplier, -release.steps)


class _Node:
    """What the workflow needs of a ClientProxy: the node id."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class _OneRound(legacy.Strategy):
    """The legacy strategy the SecAgg+ workflow drives, for one round: every given node trains on the global
    parameters with ``config``; the unmasked aggregate (the same in every FitRes) is kept in ``results``."""

    def __init__(self, node_ids: list[int], config: dict[str, Any]) -> None:
        self.node_ids, self.config = node_ids, config
        self.results: list = []
        self.failures: list = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(_Node(nid), FitIns(parameters, dict(self.config))) for nid in self.node_ids]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = list(results), list(failures)
        return (self.results[0][1].parameters if self.results else None), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _TruthTap:
    """The grid as the workflow sees it: each client's scoring-channel record is taken out of its reply before
    the workflow reads the reply (the simulator's ground truth is no part of the protocol)."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.truth: dict[int, list[int]] = {}  # client -> indices

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for reply in replies:
            if not reply.has_error() and TRUTH_KEY in reply.content:
                record = reply.content[TRUTH_KEY]
                del reply.content[TRUTH_KEY]
                self.truth[int(record["client"])] = [int(i) for i in record["indices"]]
        return replies
