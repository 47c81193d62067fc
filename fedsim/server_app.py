"""The ServerApp: FedAvg with server-side evaluation on the dev split; with an attack on, a curious server.

``app`` is what ``flwr run .`` loads (settings from ``[tool.flwr.app.config]`` / ``--run-config``);
``make_server_app(settings, recorder)`` is what ``fedleak simulate`` runs in-process. Both call ``run_server``,
which resolves an epsilon budget into a sigma (``resolve_defense``), stacks the strategy wrappers
(``fedsim.strategies``) and starts the top one.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from functools import partial

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result, Strategy

from adversary.case import GroundTruth
from defenses import DEFAULT_DELTA, Calibration, has_budget, mechanism, resolve_budget, single_release_epsilon
from fedsim import task
from fedsim.attack_actor import Attacker, make_attacker
from fedsim.core.data import partition
from fedsim.core.seeds import seed_everything
from fedsim.core.text import load_tokenizer
from fedsim.recorder import Recorder
from fedsim.settings import Settings
from fedsim.strategies import (AttackPlan, CuriousServer, PrivacyAccounting, RoundLog, RunInterrupted,
                               SecAggGrid, SecAggProtocol, layer, server_strategy)

__all__ = ["RunInterrupted", "StoppableGrid", "app", "build_strategy", "make_server_app", "resolve_defense",
           "run_server"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_server(grid, Settings.from_run_config(context.run_config))


def make_server_app(settings: Settings, recorder: Recorder | None = None,
                    stop: threading.Event | None = None) -> ServerApp:
    """A ServerApp bound to these settings (``run_simulation`` gives the ServerApp no run_config).

    ``stop``: set it (Ctrl-C in ``fedleak simulate``) and the run ends at once as ``interrupted``.
    """
    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(StoppableGrid(grid, stop) if stop is not None else grid, settings, recorder, stop)

    return server


class StoppableGrid:
    """A Grid that stops waiting for replies once ``stop`` is set.

    Flower's ServerApp runs in a (non-daemon) thread that otherwise waits out the round timeout (an hour) after the
    simulation is gone, so Ctrl-C would hang the process. Everything else is delegated to the wrapped Grid.
    """

    def __init__(self, grid: Grid, stop: threading.Event, poll_seconds: float = 0.05) -> None:
        self.grid, self.stop, self.poll_seconds = grid, stop, poll_seconds

    def __getattr__(self, name: str):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        waiting = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.time() + timeout
        replies = []
        while waiting and (deadline is None or time.time() < deadline):
            if self.stop.is_set():
                raise RunInterrupted("stopped by the user")
            got = list(self.grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if waiting:
                time.sleep(self.poll_seconds)
        return replies


def run_server(grid: Grid, s: Settings, recorder: Recorder | None = None,
               stop: threading.Event | None = None) -> Result | None:
    """One federation: R rounds of FedAvg, the global model evaluated on dev after each, leakage on the side."""
    seed_everything(s.seed)
    recorder = recorder or Recorder(s)  # records the settings as given (an epsilon budget stays one there)
    s, calibration = resolve_defense(s)  # from here on (clients, accounting) the defense is a concrete sigma
    if calibration is not None:
        recorder.note(f"privacy budget: {calibration.explanation}")
    train_split = task.load_split(s.dataset, "train", s.data_dir, s.seed)
    initial = ArrayRecord(task.state_of(task.initial_model(s, train_split.num_labels)))
    strategy = build_strategy(s, train_split, recorder, stop=stop, calibration=calibration)
    if s.secagg:  # every round under SecAgg+: the stack receives only the unmasked aggregate
        grid = SecAggGrid(grid, secagg_protocol(s))
        recorder.extra["secagg"] = secagg_facts(s)
    status = "interrupted"
    try:
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=s.rounds,
                                train_config=ConfigRecord(s.client_config()),
                                evaluate_fn=round_reporter(s, train_split.num_labels, strategy, recorder,
                                                          grid if isinstance(grid, SecAggGrid) else None))
        status = "completed"
        return result
    except RunInterrupted:
        return None
    except Exception:
        status = "failed"
        raise
    finally:
        recorder.finish(status)


def build_strategy(s: Settings, train_split: task.TaskData, recorder: Recorder, *,
                   attacker: Attacker | None = None, stop: threading.Event | None = None,
                   calibration: Calibration | None = None) -> Strategy:
    """The stack, inside out: FedAvg; privacy accounting when a defense is on; the curious server when an attack
    is on. The curious server is outermost, so it takes the scoring channel out of each reply before any other
    layer reads it. ``attacker``: where jobs run (default: the one the settings name). ``s.defense`` must hold no
    unresolved budget (``resolve_defense``); ``calibration``: what resolved it (its delta is the run's)."""
    strategy: Strategy = server_strategy(s.server_optimizer, s.lr, fraction_train=1.0, fraction_evaluate=0.0,
                                         min_train_nodes=s.clients, min_available_nodes=s.clients)
    if s.defense:  # without a defense there is no guarantee to report: epsilon stays null
        strategy = PrivacyAccounting(strategy, delta=calibration.delta if calibration else DEFAULT_DELTA)
        recorder.extra.update(privacy_facts(s, calibration))
    if s.attack != "none":
        attacker = attacker or make_attacker(s.attack_backend, s.attack_gpus, s.attack_threads, s.attack_actors,
                                             s.ray_address or os.environ.get("RAY_ADDRESS", ""))
        strategy = CuriousServer(strategy, attacker, attack_plan(s, train_split), on_records=recorder.leakage,
                                 note=recorder.note, timeout=s.attack_timeout, stop=stop)
    return strategy


def attack_plan(s: Settings, train_split: task.TaskData) -> AttackPlan:
    return AttackPlan(
        method=s.attack, iterations=s.attack_iterations, seed=s.seed, gradient_scale=s.gradient_scale,
        local_steps=s.local_steps if s.mode == "fedavg" else 1,
        examples_per_update=s.examples_per_update, tokenizer=load_tokenizer(s.vocab),
        num_labels=train_split.num_labels, model_fn=partial(task.model_with, s.model, train_split.num_labels, s.vocab),
        truth=partial(ground_truth, train_split, s.vocab, s.max_length),
        clients_per_round=s.attack_clients_count(), rounds=s.attacked_rounds(), time_budget=s.attack_time_budget,
        secagg=secagg_protocol(s) if s.secagg else None, max_length=s.max_length)


def secagg_protocol(s: Settings) -> SecAggProtocol:
    """SecAgg+'s parameters for this run; the weight bound is what each client reports as its examples."""
    return SecAggProtocol(clipping_range=s.secagg_clipping_range, quantization_range=s.secagg_quantization_range,
                          max_weight=float(s.examples_per_update))


def secagg_facts(s: Settings) -> dict:
    """What summary.json says about the protocol: its parameters and the quantisation step on an update value."""
    protocol = secagg_protocol(s)
    return {"protocol": "SecAgg+ (flwr.server.workflow.SecAggPlusWorkflow, flwr.client.mod.secaggplus_mod)",
            "clients_in_aggregate": s.clients, "clipping_range": protocol.clipping_range,
            "quantization_range": protocol.quantization_range, "modulus_range": protocol.modulus_range,
            "quantization_step": protocol.step, "clients_send": "updates w_client - w_global"}


def ground_truth(train_split: task.TaskData, vocab: str, max_length: int, indices: list[int]) -> GroundTruth:
    """Scoring channel: the examples a client reported, as the model saw them. Never part of an Observation."""
    texts, ids, labels = task.reference_texts(train_split, indices, vocab, max_length)
    return GroundTruth(texts=texts, token_ids=ids, labels=labels)


def privacy_facts(s: Settings, calibration: Calibration | None = None) -> dict:
    """What summary.json says about the defense besides each round's epsilon (which the clients' reports give):
    delta, the configured mechanism in words (with client 0's shard size), the seed paper's single-release bound,
    and for an epsilon budget the sigma it was calibrated to (``Calibration.facts``)."""
    shard = task.client_shard(s.dataset, s.data_dir, s.partition, s.clients, 0, s.seed)
    delta = calibration.delta if calibration else DEFAULT_DELTA
    return {"delta": delta, "epsilon_explanation": mechanism(s.defense, s.batch_size, len(shard)).explanation,
            "epsilon_single_release": single_release_epsilon(s.defense, delta)[0],
            **(calibration.facts() if calibration else {})}


def resolve_defense(s: Settings) -> tuple[Settings, Calibration | None]:
    """The settings with an epsilon budget (``dp:epsilon=E,c=C``, ``clip:c=C+noise:epsilon=E``) replaced by the
    sigma that makes this run end at E, and the calibration; unchanged settings and None without a budget.

    Calibrated for every client's DP-SGD steps (rounds x local steps in FedAvg, rounds in FedSGD; every client
    trains every round) at the smallest shard's rate q = B/N, so that no client ends above E. An impossible budget
    raises UsageError (one line)."""
    if not has_budget(s.defense):
        return s, None
    steps = s.local_steps if s.mode == "fedavg" else 1
    labels = task.load_split(s.dataset, "train", s.data_dir, s.seed).dataset["label"]
    smallest = min(len(shard) for shard in partition(labels, s.clients, s.partition, s.seed))
    calibration = resolve_budget(s.defense, s.rounds, steps, s.batch_size, smallest)
    return dataclasses.replace(s, defense=[calibration.resolved]), calibration


def round_reporter(s: Settings, num_labels: int, strategy: Strategy, recorder: Recorder,
                   secure: SecAggGrid | None = None) -> Callable[[int, ArrayRecord], MetricRecord]:
    """The evaluate_fn: the global model on dev after each round, and the round's line from what the layers logged
    (under SecAgg+, a note when the clipping range cut any update value: FedAvg is then biased)."""
    dev_split = task.load_split(s.dataset, "dev", s.data_dir, s.seed)
    base, privacy, curious = (layer(strategy, kind) for kind in (RoundLog, PrivacyAccounting, CuriousServer))
    clock = {"last": time.perf_counter()}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        accuracy = loss = None
        if server_round % s.eval_every == 0 or server_round == s.rounds:  # round 0: the initial model
            net = task.model_with(s.model, num_labels, s.vocab, arrays.to_torch_state_dict())
            accuracy, loss = task.evaluate_model(net, dev_split, s.vocab, s.max_length, s.eval_examples)
        now = time.perf_counter()
        log = base.rounds.get(server_round, {})
        unprotected = privacy.rounds.get(server_round, {}).get("unprotected") if privacy is not None else None
        if unprotected:
            recorder.extra["unprotected_clients"] = sorted(privacy.unprotected)
        recorder.round(server_round, train_loss=log.get("metrics", {}).get("train-loss"), eval_accuracy=accuracy,
                       eval_loss=loss, seconds=now - clock["last"], failed=log.get("failed", []),
                       epsilon=privacy.epsilon(server_round) if privacy is not None else None,
                       attacks_submitted=curious.submitted if curious is not None else 0,
                       unprotected=unprotected)
        clock["last"] = now
        clipped = secure.rounds.get(server_round, {}).get("clipped", 0) if secure is not None else 0
        if clipped:
            recorder.note(f"  SecAgg+ clipped {clipped} update value(s) to ±{s.secagg_clipping_range:g} in round "
                          f"{server_round}: raise --secagg-clipping-range")
        return None if accuracy is None else MetricRecord({"accuracy": accuracy, "loss": loss})

    return evaluate_fn
