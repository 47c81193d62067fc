"""The ServerApp: FedAvg with server-side evaluation on the dev split; with an attack on, a curious server.

``app`` is what ``flwr run .`` loads (settings from ``[tool.flwr.app.config]`` / ``--run-config``);
``make_server_app(settings, recorder)`` is what ``fedleak simulate`` runs in-process. Both call ``run_server``.
"""

from __future__ import annotations

import threading
import time
from functools import partial

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Result

from adversary.case import GroundTruth
from defenses import ClientPrivacy, single_release_epsilon
from fedsim import task
from fedsim.attack_actor import make_attacker
from fedsim.core.seeds import seed_everything
from fedsim.results import Recorder
from fedsim.strategy import AttackPlan, CuriousServer, FedAvgWithLog
from fedsim.settings import Settings
from fedsim.core.text import load_tokenizer

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


class RunInterrupted(Exception):
    """The user stopped the run; what was recorded so far stays on disk."""


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


def build_strategy(s: Settings, train_split: task.TaskData, attacker) -> tuple[FedAvgWithLog, object]:
    """FedAvg, wrapped by the curious server when an attacker is given. Returns (base, outermost)."""
    base = FedAvgWithLog(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=s.clients,
                         min_available_nodes=s.clients)
    if attacker is None:
        return base, base
    tokenizer = load_tokenizer(s.vocab)
    plan = AttackPlan(
        method=s.attack, iterations=s.attack_iterations, seed=s.seed, gradient_scale=s.gradient_scale,
        local_steps=s.local_steps if s.mode == "fedavg" else 1,
        examples_per_update=s.examples_per_update, tokenizer=tokenizer, num_labels=train_split.num_labels,
        model_fn=partial(task.model_with, s.model, train_split.num_labels, s.vocab),
        truth=partial(ground_truth, train_split, s.vocab, s.max_length),
        clients_per_round=s.attack_clients_count())
    return base, CuriousServer(base, attacker, plan)


def ground_truth(train_split: task.TaskData, vocab: str, max_length: int, indices: list[int]):
    """Scoring channel: the examples a client reported, as the model saw them. Never part of an Observation."""
    texts, ids, labels = task.reference_texts(train_split, indices, vocab, max_length)
    return GroundTruth(texts=texts, token_ids=ids, labels=labels)


class RoundPrivacy:
    """Each client's (epsilon, delta) under its defense, composed over the rounds; the round reports the largest.

    Every client is counted in every round (fraction_train = 1): a client that failed a round is still charged,
    which can only overstate epsilon. FedSGD applies the defense once per round, FedAvg once per local step.
    """

    def __init__(self, s: Settings) -> None:
        shards = [len(task.client_shard(s.dataset, s.data_dir, s.partition, s.clients, c, s.seed))
                  for c in range(s.clients)]
        self.clients = [ClientPrivacy(s.defense, s.batch_size, n) for n in shards]
        self.steps = s.local_steps if s.mode == "fedavg" else 1
        self.single_release = single_release_epsilon(s.defense)[0]

    def after_round(self) -> float:
        return max(c.record(self.steps) for c in self.clients)

    def describe(self) -> dict:
        first = self.clients[0]
        return {"delta": first.delta, "epsilon_explanation": first.explanation,
                "epsilon_single_release": self.single_release}


def make_privacy(s: Settings) -> RoundPrivacy | None:
    """Accounting only when a defense is on: without one there is no guarantee to report (epsilon stays null)."""
    return RoundPrivacy(s) if s.defense else None


def run_server(grid: Grid, s: Settings, recorder: Recorder | None = None,
               stop: threading.Event | None = None) -> Result | None:
    """One federation: R rounds of FedAvg, the global model evaluated on dev after each, leakage on the side."""
    seed_everything(s.seed)
    recorder = recorder or Recorder(s)
    train_split = task.load_split(s.dataset, "train", s.data_dir, s.seed)
    dev_split = task.load_split(s.dataset, "dev", s.data_dir, s.seed)
    model = task.initial_model(s, train_split.num_labels)

    attacker = None
    if s.attack != "none":
        attacker = make_attacker(s.attack_backend, s.attack_gpus, s.attack_threads)
    base, strategy = build_strategy(s, train_split, attacker)
    privacy = make_privacy(s)
    if privacy is not None:
        recorder.extra.update(privacy.describe())
    clock = {"last": time.perf_counter()}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net = task.model_with(s.model, train_split.num_labels, s.vocab, arrays.to_torch_state_dict())
        accuracy, loss = task.evaluate_model(net, dev_split, s.vocab, s.max_length, s.eval_examples)
        if attacker is not None:
            recorder.leakage(attacker.poll())  # whatever finished meanwhile; never waits
        now = time.perf_counter()
        log = base.rounds.get(server_round, {})
        recorder.round(server_round, train_loss=log.get("metrics", {}).get("train-loss"), eval_accuracy=accuracy,
                       eval_loss=loss, seconds=now - clock["last"], failed=log.get("failed", []),
                       epsilon=privacy.after_round() if privacy is not None and server_round > 0 else None,
                       attacks_submitted=getattr(strategy, "submitted", 0))
        clock["last"] = now
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    status = "interrupted"
    try:
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(task.state_of(model)), num_rounds=s.rounds,
                                train_config=ConfigRecord(s.client_config()), evaluate_fn=evaluate_fn)
        status = "completed"
        return result
    except RunInterrupted:
        return None
    except Exception:
        status = "failed"
        raise
    finally:
        if attacker is not None:
            if status == "completed":
                collect_outstanding(attacker, recorder, s.attack_timeout, stop)
            reason = (f"not finished within --attack-timeout {s.attack_timeout:g} s after the last round"
                      if status == "completed" else f"cancelled: the run was {status}")
            recorder.leakage(attacker.drain(0.0, reason))  # anything still running is recorded, not lost
        recorder.finish(status)


def collect_outstanding(attacker, recorder: Recorder, timeout: float, stop: threading.Event | None) -> None:
    """After the last round: record attack results as they finish, for at most ``timeout`` seconds."""
    if not attacker.pending:
        return
    total = attacker.pending
    recorder.note(f"training done; waiting for {total} attack job(s) (at most {timeout:g} s) ...")
    deadline = time.perf_counter() + timeout
    while attacker.pending and time.perf_counter() < deadline and not (stop is not None and stop.is_set()):
        for record in attacker.poll(timeout=min(1.0, max(0.0, deadline - time.perf_counter()))):
            recorder.leakage([record])
            recorder.note(f"  attack on round {record['round']}, client {record['client']}: " + (
                f"error {record['error']}" if "error" in record else f"ROUGE-1 {record['rouge1']:.2f}"
                f" in {record['seconds']:.0f} s  ({total - attacker.pending}/{total})"))
