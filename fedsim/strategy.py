"""Server strategies: FedAvg with a round log, and the honest-but-curious wrapper that inverts client updates.

Composition, Flower style: ``CuriousServer(FedAvgWithLog(...), attacker, plan)`` runs the wrapped strategy
unchanged (same messages, same aggregate) and, on the side, turns every targeted client's update into an
:class:`~adversary.case.Observation` and hands it to an attacker. ``--attack none`` uses the bare FedAvg: no
attack code is imported or run.

Gradient from an update (what the server can compute, given the global weights it sent):

* FedSGD (one plain SGD step at ``lr``): ``g = (w_global - w_client) / lr``. Exact up to the float32 rounding of
  the returned weights: ``|error| <= ulp(w) / (2 lr)`` per coordinate (about 1e-8 at ``w ~ 0.02, lr = 0.1``).
* FedAvg (E plain SGD steps on E batches): ``(w_global - w_client) / (lr E)`` is the *mean* of the E per-step
  gradients, each taken at weights that have already drifted by up to E-1 steps. The attack treats it as the
  gradient of all E*B examples at ``w_global``: an approximation that is exact for E = 1 and degrades as
  ``lr * E`` grows (the weights move between steps).

Ground truth: a client's reply may carry a ``truth`` ConfigRecord (example indices, the scoring channel). The
wrapper removes it from the reply before anything else reads the reply, and passes it only to the ``truth``
callable of the plan, whose output goes to the attacker's scoring step, never into the Observation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from adversary.case import Observation
from fedsim.attack_actor import Job
from fedsim.core import seeds
from fedsim.core.train import EPS32

TRUTH_KEY = "truth"  # the scoring channel's record in a client reply


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Train loss averaged over examples, examples summed, and how many clients took part."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    weights = np.array([float(m[weighted_by_key]) for m in metrics])
    losses = np.array([float(m["train-loss"]) for m in metrics])
    return MetricRecord({"train-loss": float((weights * losses).sum() / weights.sum()),
                         weighted_by_key: int(weights.sum()), "clients": len(metrics)})


def client_of(msg: Message) -> int:
    """The client's partition id (node ids are random); -1 for a failed reply, which has no content."""
    if msg.has_error():
        return -1
    return int(next(iter(msg.content.metric_records.values())).get("client", -1))


class FedAvgWithLog(FedAvg):
    """FedAvg that aggregates replies in client order (a seed then fixes the floating-point sum) and keeps, per
    round, the aggregated train metrics and the clients that failed, so the run can report them."""

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


@dataclass
class AttackPlan:
    """What the curious server needs besides the updates: how to rebuild the model, invert an update, and
    describe the job. ``truth`` turns a reply's scoring-channel record into a GroundTruth (scoring only)."""

    method: str
    iterations: int
    seed: int
    gradient_scale: float  # lr (FedSGD) or lr * E (FedAvg)
    examples_per_update: int
    model_fn: Callable[[dict[str, torch.Tensor]], torch.nn.Module]  # state dict -> model at those weights
    tokenizer: object
    num_labels: int
    truth: Callable[[list[int]], object]  # indices -> adversary.case.GroundTruth
    clients_per_round: int | None = None  # None: attack every client
    local_steps: int = 1  # SGD steps behind one update (FedAvg's E), each rounding the weights once


class CuriousServer(Strategy):
    """Wraps a strategy; before it aggregates, submits one reconstruction job per targeted client update.

    ``attacker.submit(job, observation, truth)`` must not block (a Ray actor call); results are collected by
    whoever owns the attacker (the ServerApp, once per round and at the end).
    """

    def __init__(self, strategy: FedAvg, attacker, plan: AttackPlan) -> None:
        self.strategy = strategy
        self.attacker = attacker
        self.plan = plan
        self._global: dict[int, ArrayRecord] = {}
        self.submitted = 0

    # --- steps a subclass may override ---------------------------------------------------------------------
    def targets(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Which updates to attack: all, or K clients drawn from (seed, round)."""
        valid = sorted((m for m in replies if not m.has_error()), key=client_of)  # arrival order is random
        k = self.plan.clients_per_round
        if k is None or k >= len(valid):
            return valid
        rng = seeds.rng(self.plan.seed, server_round, 7)
        chosen = set(rng.choice(len(valid), size=k, replace=False).tolist())
        return [m for i, m in enumerate(valid) if i in chosen]

    def derive_gradient(self, global_state: dict[str, torch.Tensor], client_state: dict[str, torch.Tensor],
                        names: Iterable[str]) -> dict[str, torch.Tensor]:
        """(w_global - w_client) / scale in float64, returned as float32 (module doc: exact for FedSGD)."""
        scale = self.plan.gradient_scale
        return {n: ((global_state[n].double() - client_state[n].double()) / scale).float() for n in names}

    def observation(self, server_round: int, reply: Message):
        """What the server sees for one update: the model at the global weights, the derived gradient, and the
        public facts (batch size, tokenizer, label count). No lengths: the attack reads them from the gradient."""
        global_state = self._global[server_round].to_torch_state_dict()
        model = self.plan.model_fn(global_state)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        client_state = reply.content["arrays"].to_torch_state_dict()
        gradients = self.derive_gradient(global_state, client_state, names)
        return Observation(model=model, gradients=gradients, batch_size=self.plan.examples_per_update,
                           tokenizer=self.plan.tokenizer, seq_lengths=None, num_labels=self.plan.num_labels,
                           gradient_error=self.rounding_error(client_state, gradients))

    def rounding_error(self, client_state: dict[str, torch.Tensor], gradients: dict[str, torch.Tensor]
                       ) -> dict[str, float]:
        """Per tensor, a bound on ||derived - true gradient||_F from float32 rounding alone: each SGD step rounds
        the weights by at most ulp(w)/2 (ulp(w) here, for steps that cross a power of two), divided by lr, plus
        the float32 cast of the result. Exact-recovery attacks set their thresholds from it."""
        steps, bounds = self.plan.local_steps, {}
        for n, g in gradients.items():
            w = client_state[n].float().abs()
            ulp = torch.nextafter(w, torch.full_like(w, math.inf)) - w
            bounds[n] = float(steps * ulp.double().norm() / self.plan.gradient_scale
                              + EPS32 * g.double().norm())
        return bounds

    # --- Strategy interface ----------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._global = {server_round: arrays}  # the weights every client of this round starts from
        config = ConfigRecord(dict(config))
        config["report-truth"] = True  # the simulator's scoring channel (client_app module doc)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        truths = {id(m): _pop_truth(m) for m in replies}  # scoring channel, out of the replies from here on
        for reply in self.targets(server_round, replies):
            client = client_of(reply)
            indices = truths[id(reply)]
            truth = self.plan.truth(indices) if indices is not None else None
            job = Job(round=server_round, client=client, method=self.plan.method, iterations=self.plan.iterations,
                      seed=seeds.derive_seed(self.plan.seed, server_round, client, 11))
            self.attacker.submit(job, self.observation(server_round, reply), truth)
            self.submitted += 1
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


def _pop_truth(msg: Message) -> list[int] | None:
    if msg.has_error() or TRUTH_KEY not in msg.content:
        return None
    record = msg.content[TRUTH_KEY]
    del msg.content[TRUTH_KEY]
    return [int(i) for i in record["indices"]]

