"""The honest-but-curious server: a strategy wrapper that inverts client updates on the side.

``CuriousServer(strategy, attacker, plan)`` runs the wrapped strategy unchanged (same messages, same aggregate)
and, before it aggregates, turns every targeted client's update into an :class:`~adversary.case.Observation` and
submits it to an attacker. It owns the attacker's whole lifecycle: submit (``aggregate_train``), poll (each
round, records handed to ``on_records``), finish after the last round (wait at most ``timeout`` seconds, then
what is still running becomes an error record) or cancel when the run fails or is interrupted. ``--attack none``
uses no CuriousServer: no attack code is imported or run.

Gradient from an update (what the server can compute, given the global weights it sent):

* FedSGD (one plain SGD step at ``lr``): ``g = (w_global - w_client) / lr``. Exact up to the float32 rounding of
  the returned weights: ``|error| <= ulp(w) / (2 lr)`` per coordinate (about 1e-8 at ``w ~ 0.02, lr = 0.1``).
* FedAvg (E plain SGD steps on E batches): ``(w_global - w_client) / (lr E)`` is the *mean* of the E per-step
  gradients, each taken at weights that have already drifted by up to E-1 steps. The observation says E and lr,
  so an attack can peel the steps apart and certify by replaying them (``adversary.replay``).

Under SecAgg+ (``fedsim.strategies.secagg``) the one reply of a round is the unmasked aggregate of K clients
(its metrics say ``clients-in-aggregate``): the server attacks it as ONE batch of the K x B examples (the mean of
K clients' mean-loss gradients over equal batches is the mean-loss gradient of their union), with the protocol's
quantisation error added to the published bound, and scores it against the union of those clients' examples.
Its leakage records say ``secagg``, ``clients_in_aggregate``, ``tokens`` (N, from the scoring channel) and
``hidden_size`` (d): exact recovery from first-layer spans needs N <= d.

Ground truth: a client's reply may carry a ``truth`` ConfigRecord (example indices, the scoring channel). The
wrapper removes it from the reply before passing the replies on (put it outermost and no other layer sees it),
and passes it only to the ``truth`` callable of the plan, whose output goes to the attacker's scoring step, never
into the Observation.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from adversary.case import Observation, derive_gradient, rounding_error, typical_rounding_error
from fedsim.attack_actor import Attacker, Job
from fedsim.core import seeds
from fedsim.strategies.base import TRUTH_KEY, RunInterrupted, StrategyWrapper, client_of
from fedsim.strategies.secagg import AGGREGATE, SecAggProtocol


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
    rounds: frozenset[int] | None = None  # the rounds attacked (--attack-rounds); None: every round
    local_steps: int = 1  # SGD steps behind one update (FedAvg's E), each rounding the weights once
    time_budget: float | None = None  # wall-clock seconds per job (--attack-time-budget); None: unbounded
    secagg: SecAggProtocol | None = None  # the SecAgg+ parameters (--secagg): its quantisation error is public
    max_length: int | None = None  # the clients' tokenizer truncation (--max-length): the server configured it


class CuriousServer(StrategyWrapper):
    """Wraps a strategy; before it aggregates, submits one reconstruction job per targeted client update.

    ``attacker.submit`` must not block for long (a Ray actor call returns at once; the inline attacker runs the
    job there). ``on_records`` receives finished records (default: kept in ``self.records``); ``note`` gets
    progress lines while the server waits after the last round; ``stop`` set ends that wait early.
    """

    def __init__(self, strategy: Strategy, attacker: Attacker, plan: AttackPlan, *,
                 on_records: Callable[[list[dict[str, Any]]], None] | None = None,
                 note: Callable[[str], None] | None = None, timeout: float = 600.0,
                 stop: threading.Event | None = None) -> None:
        super().__init__(strategy)
        self.attacker = attacker
        self.plan = plan
        self.records: list[dict[str, Any]] = []
        self.on_records = on_records or self.records.extend
        self.note = note or (lambda line: None)
        self.timeout = timeout
        self.stop = stop
        self._global: dict[int, ArrayRecord] = {}
        self._facts: dict[tuple[int, int], dict[str, Any]] = {}  # (round, client) -> what its records add
        self.submitted = 0

    # --- the attacker's lifecycle --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around the run: finish the attacks after the last round, or cancel them if the run does not end well."""
        with super().running():
            try:
                yield
            except BaseException as exc:
                self.cancel("interrupted" if isinstance(exc, (KeyboardInterrupt, RunInterrupted)) else "failed")
                raise
            self.finish()

    def poll(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Hand over whatever finished meanwhile (waiting at most ``timeout`` seconds)."""
        records = self._annotate(self.attacker.poll(timeout=timeout))
        if records:
            self.on_records(records)
        return records

    def finish(self) -> None:
        """After the last round: hand over results as they finish, for at most ``timeout`` seconds; whatever is
        still running then becomes an error record (nothing is lost)."""
        total = self.attacker.pending
        if total:
            self.note(f"training done; waiting for {total} attack job(s) (at most {self.timeout:g} s) ...")
            deadline = time.perf_counter() + self.timeout
            while self.attacker.pending and time.perf_counter() < deadline and not self._stopped():
                for record in self.poll(timeout=min(1.0, max(0.0, deadline - time.perf_counter()))):
                    who = "the aggregate" if record["client"] == AGGREGATE else f"client {record['client']}"
                    self.note(f"  attack on round {record['round']}, {who}: " + (
                        f"error {record['error']}" if "error" in record else f"ROUGE-1 {record['rouge1']:.2f}"
                        f" in {record['seconds']:.0f} s  ({total - self.attacker.pending}/{total})"))
        self._drain(f"not finished within --attack-timeout {self.timeout:g} s after the last round")

    def cancel(self, status: str) -> None:
        """The run failed or was interrupted: record what finished, and the rest as cancelled."""
        self._drain(f"cancelled: the run was {status}")

    def _drain(self, reason: str) -> None:
        records = self._annotate(self.attacker.drain(0.0, reason))
        if records:
            self.on_records(records)

    def _annotate(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Records with the facts of their update added (an aggregate's size; nothing for a plain update)."""
        return [{**r, **self._facts.get((r["round"], r["client"]), {})} for r in records]

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    # --- steps a subclass may override ---------------------------------------------------------------------
    def targets(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Which updates to attack: none outside the planned rounds; else all, or K clients drawn from (seed, round)."""
        if self.plan.rounds is not None and server_round not in self.plan.rounds:
            return []
        valid = sorted((m for m in replies if not m.has_error()), key=client_of)  # arrival order is random
        k = self.plan.clients_per_round
        if k is None or k >= len(valid):
            return valid
        rng = seeds.rng(self.plan.seed, server_round, 7)
        chosen = set(rng.choice(len(valid), size=k, replace=False).tolist())
        return [m for i, m in enumerate(valid) if i in chosen]

    def derive_gradient(self, global_state: dict[str, torch.Tensor], client_state: dict[str, torch.Tensor],
                        names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The update as a gradient (:func:`adversary.case.derive_gradient`; module doc: exact for FedSGD)."""
        return derive_gradient(global_state, client_state, names, self.plan.gradient_scale)

    def observation(self, server_round: int, reply: Message) -> Observation:
        """What the server sees for one update: the model at the global weights, the derived gradient, and the
        public facts (batch size, tokenizer, label count). No lengths: the attack reads them from the gradient."""
        global_state = self._global[server_round].to_torch_state_dict()
        model = self.plan.model_fn(global_state)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        client_state = reply.content["arrays"].to_torch_state_dict()
        gradients = self.derive_gradient(global_state, client_state, names)
        clients = aggregated_clients(reply)
        if clients is None:
            return Observation(model=model, gradients=gradients, batch_size=self.plan.examples_per_update,
                               tokenizer=self.plan.tokenizer, seq_lengths=None, num_labels=self.plan.num_labels,
                               gradient_error=self.rounding_error(client_state, gradients),
                               typical_error=typical_rounding_error(client_state, gradients, self.plan.gradient_scale,
                                                                    self.plan.local_steps),
                               local_steps=self.plan.local_steps,  # FedAvg: adversary.replay certifies by replay
                               learning_rate=self.plan.gradient_scale / self.plan.local_steps,
                               max_length=self.plan.max_length)
        # the aggregate: its new weights were rounded once more (global + mean update), and quantised per client
        error = self.rounding_error(client_state, gradients, steps=self.plan.local_steps + 1)
        if self.plan.secagg is not None:
            scale = self.plan.gradient_scale * clients  # the mean of K quantised updates, as a gradient
            error = {n: e + self.plan.secagg.error_bound(_live(gradients[n]), clients) / scale
                     for n, e in error.items()}
        return Observation(model=model, gradients=gradients, batch_size=clients * self.plan.examples_per_update,
                           tokenizer=self.plan.tokenizer, seq_lengths=None, num_labels=self.plan.num_labels,
                           gradient_error=error, max_length=self.plan.max_length)

    def rounding_error(self, client_state: dict[str, torch.Tensor], gradients: dict[str, torch.Tensor],
                       steps: int | None = None) -> dict[str, float]:
        """The published bound (:func:`adversary.case.rounding_error`) for ``steps`` roundings of the weights behind
        the update (default: the plan's local steps)."""
        return rounding_error(client_state, gradients, self.plan.gradient_scale, steps or self.plan.local_steps)

    # --- the Strategy methods it changes -------------------------------------------------------------------------
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
                      seed=seeds.derive_seed(self.plan.seed, server_round, client, 11), seconds=self.plan.time_budget)
            observation = self.observation(server_round, reply)
            clients = aggregated_clients(reply)
            if clients is not None:  # what the record says about the aggregate (N from the scoring channel)
                self._facts[server_round, client] = {
                    "secagg": self.plan.secagg is not None, "clients_in_aggregate": clients,
                    "tokens": sum(len(ids) for ids in truth.token_ids) if truth is not None else None,
                    "hidden_size": int(observation.model.config.hidden_size)}
            self.attacker.submit(job, observation, truth)
            self.submitted += 1
        aggregated = self.strategy.aggregate_train(server_round, replies)
        self.poll()  # whatever finished meanwhile; never waits
        return aggregated


def _pop_truth(msg: Message) -> list[int] | None:
    if msg.has_error() or TRUTH_KEY not in msg.content:
        return None
    record = msg.content[TRUTH_KEY]
    del msg.content[TRUTH_KEY]
    return [int(i) for i in record["indices"]]


def aggregated_clients(reply: Message) -> int | None:
    """K when the reply is the aggregate of K clients' updates (SecAgg+), else None (one client's update)."""
    metrics = reply.content.metric_records.get("metrics") if not reply.has_error() else None
    value = metrics.get("clients-in-aggregate") if metrics is not None else None
    return None if value is None else int(value)


def _live(gradient: torch.Tensor) -> int:
    """The values of a tensor the protocol may have rounded: all but the rows that are zero in the aggregate
    (embedding rows of tokens and positions no client used are zero in every update, and zero is sent exactly;
    a used row is dense and cannot round to all zeros)."""
    if gradient.dim() < 2:
        return gradient.numel()
    rows = gradient.reshape(gradient.shape[0], -1)
    return int((rows != 0).any(1).sum()) * rows.shape[1]
