"""The federation: Flower apps, the curious-server strategy, the attack actor, `fedleak simulate`, `flwr run .` config.

Most tests drive the real ServerApp/ClientApp code through ``LocalGrid`` (an in-process Flower Grid: no Ray, fast);
one test runs the real Ray simulation end to end.
"""

from __future__ import annotations

import dataclasses

import json
import stat
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.serverapp import Grid

from fedsim import task
from fedsim.attack_actor import error_record
from fedsim.client_app import app as client_app
from fedsim.strategies import CuriousServer, FedAvgWithLog, RunInterrupted
from fedsim.settings import Settings
from fedsim.core.text import load_tokenizer
from fedsim.core.train import batch_gradients, sgd_step

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


# --- an in-process Grid: the real ClientApp called directly --------------------------------------------------------
class LocalGrid(Grid):
    """Delivers each message to ``client_app`` in this process; a raising client becomes an error reply."""

    def __init__(self, num_clients: int, app=client_app, fail_client: int | None = None) -> None:
        self.nodes = {1000 + i: i for i in range(num_clients)}
        self.app, self.fail_client = app, fail_client
        self.delivered: list[int] = []

    def set_run(self, run) -> None:  # pragma: no cover - not used in process
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            partition = self.nodes[node]
            self.delivered.append(partition)
            context = Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                              node_config={"partition-id": partition, "num-partitions": len(self.nodes)})
            try:
                if partition == self.fail_client:
                    raise RuntimeError("disk full on this client")
                replies.append(self.app(msg, context))
            except Exception:
                replies.append(Message(Error(code=1, reason=traceback.format_exc()), reply_to=msg))
        return replies


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny-model ops gain nothing from threads; on a shared 2-core machine a spinning second thread costs a lot.
    One thread is also what each Ray client has, so in-process and Ray runs compute the same floats."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Outside a Flower run nobody sets the process's task identity, which new Messages read."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, getattr(TaskIdentity, name) or 1)


def small(tmp_path: Path, **overrides) -> Settings:
    base = dict(model="tiny", init="uniform:0.1", dataset="pii", clients=2, rounds=2, batch_size=1, lr=0.1, attack="tag",
                attack_clients="all", attack_rounds="all",
                attack_iterations=30, attack_backend="inline", attack_threads=1, eval_examples=40, max_length=24,
                seed=3, out=str(tmp_path / "run"))
    base.update(overrides)
    return Settings(**base)


def run_local(settings: Settings, **grid_kwargs):
    from fedsim.server_app import run_server
    from fedsim.recorder import Recorder

    lines: list[str] = []
    recorder = Recorder(settings, echo=lines.append)
    grid = LocalGrid(settings.clients, **grid_kwargs)
    run_server(grid, settings, recorder)
    return recorder, lines


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- a fake attacker that only records what the strategy hands it --------------------------------------------------
class Capture:
    def __init__(self) -> None:
        self.jobs: list[tuple] = []

    def submit(self, job, observation, truth) -> None:
        self.jobs.append((job, observation, truth))

    def poll(self, timeout=0.0):
        return []

    def drain(self, timeout=0.0, reason=""):
        return []

    def close(self) -> None:
        pass

    pending = 0


class _Nodes:
    """Just enough Grid for FedAvg.configure_train (node sampling)."""

    def __init__(self, ids):
        self.ids = ids

    def get_node_ids(self):
        return self.ids


def curious(settings: Settings, attacker, train):
    from fedsim.recorder import Recorder
    from fedsim.server_app import build_strategy
    from fedsim.strategies import layer

    strategy = build_strategy(settings, train, Recorder(settings, echo=lambda _: None), attacker=attacker)
    return layer(strategy, FedAvgWithLog), strategy


@pytest.mark.parametrize("mode,steps", [("fedsgd", 1), ("fedavg", 2)])
def test_strategy_sees_every_update_and_derives_the_clients_gradient(tmp_path, mode, steps):
    s = small(tmp_path, mode=mode, local_steps=steps, batch_size=2, lr=0.05)
    train = task.load_split("pii", "train", "", s.seed)
    model = task.initial_model(s, train.num_labels)
    global_arrays = ArrayRecord(task.state_of(model))
    attacker = Capture()
    base, strategy = curious(s, attacker, train)
    grid = LocalGrid(2)

    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(s.client_config()), _Nodes(list(grid.nodes))))
    assert all(m.content["config"]["report-truth"] for m in messages)
    replies = grid.send_and_receive(messages)
    assert all("truth" in r.content for r in replies)
    plain_arrays, _ = FedAvgWithLog().aggregate_train(1, [_copy(r, drop_truth=True) for r in replies])
    arrays, metrics = strategy.aggregate_train(1, replies)

    # every client's update reached the attacker, once, and the aggregate is plain FedAvg's
    assert sorted(job.client for job, _, _ in attacker.jobs) == [0, 1]
    for name, value in plain_arrays.to_torch_state_dict().items():
        assert torch.equal(arrays.to_torch_state_dict()[name], value)
    assert metrics["num-examples"] == 2 * s.examples_per_update
    assert all("truth" not in r.content for r in replies)  # the scoring channel never goes past the wrapper

    for job, observation, truth in attacker.jobs:
        # what the client really computed, redone here: the same examples, plain SGD steps from the global weights
        shard = task.client_shard("pii", "", s.partition, 2, job.client, s.seed)
        used = task.pick_examples(shard, s.examples_per_update, s.seed, 1, job.client)
        local = task.model_with(s.model, 2, s.vocab, global_arrays.to_torch_state_dict())
        expected: dict[str, torch.Tensor] = {}
        for k in range(steps):
            batch = task.batch_of(train, used[k * s.batch_size:(k + 1) * s.batch_size], s.vocab, s.max_length)
            grads = batch_gradients(local, batch)
            for n, g in grads.items():
                expected[n] = expected.get(n, 0) + g / steps
            sgd_step(local, grads, s.lr)  # the client's own arithmetic: the bound is on its rounding
        assert set(observation.gradients) == set(expected)
        for name, g in expected.items():
            torch.testing.assert_close(observation.gradients[name], g, rtol=1e-3, atol=1e-5)
            # the rounding bound the server publishes for exact attacks holds, and is not vacuous
            error = float((observation.gradients[name].double() - g.double()).norm())
            assert error <= observation.gradient_error[name] < 1e-2 * float(g.norm()) + 1e-6
        assert observation.batch_size == s.examples_per_update and observation.seq_lengths is None
        # the Observation is the global model, not the client's; the truth is what the client used
        for n, p in observation.model.state_dict().items():
            assert torch.equal(p, global_arrays.to_torch_state_dict()[n])
        assert truth.labels == [int(train.dataset[i]["label"]) for i in used]


def test_span_recovers_the_sentence_exactly_from_an_update_the_server_derived_from_rounded_weights(tmp_path):
    """FedSGD clients send float32 weights; (w_global - w_client) / lr carries their rounding (~ulp(w) / lr per
    coordinate), far above the gradient's own precision. With the bound the server publishes, span stays exact."""
    from adversary.options import Budget
    from adversary.registry import get_attack

    # tinybert4 (hidden 312): on the 32-wide tiny model the weakest directions of a 24-token gradient sit below
    # the weights' rounding, so no bound can recover them from weights
    s = small(tmp_path, model="tinybert4", init="normal:0.02", batch_size=1, lr=0.02, attack="span")
    train = task.load_split("pii", "train", "", s.seed)
    arrays = ArrayRecord(task.state_of(task.initial_model(s, train.num_labels)))
    attacker = Capture()
    _, strategy = curious(s, attacker, train)
    grid = LocalGrid(2)
    strategy.aggregate_train(1, grid.send_and_receive(
        strategy.configure_train(1, arrays, ConfigRecord(s.client_config()), _Nodes(list(grid.nodes)))))
    assert len(attacker.jobs) == 2
    for _, observation, truth in attacker.jobs:
        exact = get_attack("span")(observation, Budget(s.attack_iterations), seed=0)
        assert exact.info["span_check_passed"] and exact.texts == truth.texts
        blind = get_attack("span")(dataclasses.replace(observation, gradient_error=None), Budget(s.attack_iterations),
                                   seed=0)
        assert not blind.info["span_check_passed"]  # without the bound, rounding reads as noise


def test_attack_clients_k_attacks_k_clients_per_round_chosen_by_the_seed(tmp_path):
    s = small(tmp_path, clients=3, attack_clients="1")
    train = task.load_split("pii", "train", "", s.seed)
    arrays = ArrayRecord(task.state_of(task.initial_model(s, train.num_labels)))
    chosen = []
    for _ in range(2):
        attacker = Capture()
        _, strategy = curious(s, attacker, train)
        grid = LocalGrid(3)
        for rnd in (1, 2, 3):
            msgs = strategy.configure_train(rnd, arrays, ConfigRecord(s.client_config()), _Nodes(list(grid.nodes)))
            strategy.aggregate_train(rnd, list(reversed(grid.send_and_receive(msgs))))
        chosen.append([(job.round, job.client) for job, _, _ in attacker.jobs])
    assert [r for r, _ in chosen[0]] == [1, 2, 3]  # one client per round
    assert chosen[0] == chosen[1]  # the same ones again: drawn from the seed, not from arrival order


def _copy(msg: Message, drop_truth: bool) -> Message:
    content = RecordDict({k: v for k, v in msg.content.items() if not (drop_truth and k == "truth")})
    return Message(content=content, metadata=msg.metadata)


class Background:
    """A fake attacker that, like the Ray one, runs jobs in the background: nothing finishes during the rounds;
    after the last round, client 0's jobs finish on the first wait and client 1's never do."""

    def __init__(self) -> None:
        self.running: list = []
        self.reasons: list[str] = []

    def submit(self, job, observation, truth) -> None:
        self.running.append(job)

    @property
    def pending(self) -> int:
        return len(self.running)

    def poll(self, timeout=0.0):
        if timeout <= 0:
            return []
        time.sleep(timeout)
        done = [j for j in self.running if j.client == 0]
        self.running = [j for j in self.running if j.client != 0]
        return [{"round": j.round, "client": j.client, "method": j.method, "rouge1": 1.0, "seconds": 0.0} for j in done]

    def drain(self, timeout=0.0, reason=""):
        self.reasons.append(reason)
        records, self.running = [error_record(j, reason) for j in self.running], []
        return records

    def close(self) -> None:
        pass


def _curious_run(tmp_path, grid, rounds: int, timeout: float = 0.3):
    from fedsim.server_app import attack_plan

    s = small(tmp_path, attack_timeout=timeout, rounds=rounds)
    train = task.load_split("pii", "train", "", s.seed)
    attacker, lines = Background(), []
    strategy = CuriousServer(FedAvgWithLog(min_train_nodes=2, min_available_nodes=2), attacker,
                             attack_plan(s, train), note=lines.append, timeout=timeout)
    arrays = ArrayRecord(task.state_of(task.initial_model(s, train.num_labels)))
    run = lambda: strategy.start(grid=grid, initial_arrays=arrays, num_rounds=rounds,  # noqa: E731
                                 train_config=ConfigRecord(s.client_config()))
    return strategy, attacker, lines, run


def test_curious_server_drains_its_attacker_after_the_last_round(tmp_path):
    strategy, attacker, lines, run = _curious_run(tmp_path, LocalGrid(2), rounds=1, timeout=0.3)
    start = time.perf_counter()
    run()
    waited = time.perf_counter() - start
    records = {(r["round"], r["client"]): r for r in strategy.records}
    assert set(records) == {(1, 0), (1, 1)} and attacker.pending == 0
    assert "error" not in records[(1, 0)]  # finished while the server waited
    assert records[(1, 1)]["error"] == "not finished within --attack-timeout 0.3 s after the last round"
    assert attacker.reasons == [records[(1, 1)]["error"]]  # drained once, at the end
    assert any("waiting for 2 attack job(s)" in line for line in lines) and any("(1/2)" in line for line in lines)
    assert waited >= 0.3


class FailingGrid(LocalGrid):
    """Round 1 goes through; round 2 raises ``error`` while the server waits for replies."""

    def __init__(self, num_clients: int, error: BaseException) -> None:
        super().__init__(num_clients)
        self.error, self.calls = error, 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages:
            self.calls += 1
            if self.calls == 2:
                raise self.error
        return super().send_and_receive(messages, timeout=timeout)


@pytest.mark.parametrize("error,status", [(RuntimeError("link down"), "failed"),
                                          (RunInterrupted("stopped by the user"), "interrupted")])
def test_curious_server_cancels_its_attacks_when_the_run_does_not_end_well(tmp_path, error, status):
    strategy, attacker, lines, run = _curious_run(tmp_path, FailingGrid(2, error), rounds=2, timeout=60)
    with pytest.raises(type(error)):
        run()
    assert sorted((r["round"], r["client"]) for r in strategy.records) == [(1, 0), (1, 1)]
    assert all(r["error"] == f"cancelled: the run was {status}" for r in strategy.records)
    assert attacker.pending == 0 and not any("waiting" in line for line in lines)  # no wait for a dead run


def test_client_reply_carries_examples_loss_and_truth_only_when_asked(tmp_path):
    s = small(tmp_path)
    train = task.load_split("pii", "train", "", s.seed)
    model = task.initial_model(s, train.num_labels)
    base = FedAvgWithLog(min_train_nodes=2, min_available_nodes=2)
    msgs = list(base.configure_train(1, ArrayRecord(task.state_of(model)), ConfigRecord(s.client_config()), _Nodes([1000, 1001])))
    reply = LocalGrid(2).send_and_receive(msgs[:1])[0]
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 1 and 0.0 < metrics["train-loss"] < 10.0
    assert "truth" not in reply.content  # plain FedAvg never asks for the scoring channel


@pytest.mark.xdist_group("ray")  # with -n 2 (README): on the worker that runs every Ray test, one at a time
def test_simulation_on_ray_end_to_end(tmp_path):
    """The real thing: Flower's Ray simulation, 2 clients, 2 rounds, tiny model, TAG in a Ray actor."""
    from fedsim import simulate

    # Ray runs its workers niced: on a machine busy with other jobs the attack actor gets a few % of a core, so
    # the wait for outstanding attacks is generous (one run at load average 8 failed here; its output was lost)
    s = small(tmp_path, attack_backend="ray", attack_iterations=RAY_ITERATIONS, attack_threads=1, attack_timeout=3600)
    lines: list[str] = []
    summary = simulate.run(s, echo=lines.append)
    out = Path(s.out)
    rounds, leaks = read(out / "rounds.jsonl"), read(out / "leakage.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert set(r) >= {"round", "train_loss", "eval_accuracy", "eval_loss", "epsilon", "seconds"}
        assert r["epsilon"] is None and 0 <= r["eval_accuracy"] <= 1 and r["train_loss"] > 0
    assert sorted((r["round"], r["client"]) for r in leaks) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for r in leaks:
        assert "error" not in r, r.get("traceback")
        assert set(r) >= {"round", "client", "method", "reference", "reconstruction", "rouge1", "rouge2", "rougeL",
                          "recover_rate", "seconds"}
    assert summary["status"] == "completed" and summary["attacks"] == {"scored": 4, "errors": 0}
    assert json.loads((out / "summary.json").read_text())["final_accuracy"] == rounds[-1]["eval_accuracy"]
    assert (out / "simulate.png").stat().st_size > 1000
    for name in ("leakage.jsonl", "summary.json", "rounds.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert sum(line.startswith("round ") for line in lines) == 3  # round 0 + one per round
    # leakage: far above what random tokens of the same length score against the same references
    baseline = random_token_rouge1([r["reference"][0] for r in leaks])
    mean_rouge1 = float(np.mean([r["rouge1"] for r in leaks]))
    assert mean_rouge1 > baseline + 0.4, (mean_rouge1, baseline, [r["reconstruction"] for r in leaks])

    # same seed, same rounds and reconstructions: the Ray run and an in-process run of the same settings agree
    # (both single-threaded, see _one_thread: the attack amplifies float differences between thread counts)
    run_local(small(tmp_path, out=str(tmp_path / "again"), attack_iterations=RAY_ITERATIONS))
    again = read(tmp_path / "again" / "leakage.jsonl")
    assert _texts(again) == _texts(leaks)
    for a, b in zip(read(tmp_path / "again" / "rounds.jsonl"), rounds):
        assert a["eval_accuracy"] == b["eval_accuracy"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


RAY_ITERATIONS = 300


def _texts(leaks):
    return {(r["round"], r["client"]): r["reconstruction"] for r in leaks}


def random_token_rouge1(references: list[str], seed: int = 0) -> float:
    from adversary.metrics import rouge

    tok = load_tokenizer()
    rng = np.random.default_rng(seed)
    scores = []
    for ref in references:
        n = len(tok(ref, add_special_tokens=False)["input_ids"])
        ids = rng.integers(1000, tok.vocab_size, size=n).tolist()
        scores.append(rouge(ref, tok.decode(ids, skip_special_tokens=True))["rouge1"])
    return float(np.mean(scores))


def test_same_seed_same_rounds_and_reconstructions(tmp_path):
    first, _ = run_local(small(tmp_path, out=str(tmp_path / "a")))
    second, _ = run_local(small(tmp_path, out=str(tmp_path / "b")))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read(tmp_path / "a" / "rounds.jsonl")) == strip(read(tmp_path / "b" / "rounds.jsonl"))
    assert _texts(read(tmp_path / "a" / "leakage.jsonl")) == _texts(read(tmp_path / "b" / "leakage.jsonl"))
    other, _ = run_local(small(tmp_path, out=str(tmp_path / "c"), seed=4))
    assert _texts(read(tmp_path / "c" / "leakage.jsonl")) != _texts(read(tmp_path / "a" / "leakage.jsonl"))


def test_a_raising_attack_is_recorded_and_the_federation_goes_on(tmp_path):
    from adversary.registry import ATTACKS, register

    @register("boom")
    def boom(observation, **_):
        raise RuntimeError("attack exploded")

    try:
        s = small(tmp_path)
        s.attack = "boom"  # registered above; the CLI only offers dlg/tag
        recorder, lines = run_local(s)
    finally:
        ATTACKS.pop("boom", None)
    rounds, leaks = read(Path(s.out) / "rounds.jsonl"), read(Path(s.out) / "leakage.jsonl")
    assert [r["round"] for r in rounds] == [1, 2]
    assert len(leaks) == 4 and all("attack exploded" in r["error"] for r in leaks)
    assert all(r["reference"] for r in leaks)  # the job still knows what it failed to recover
    assert recorder.summary["status"] == "completed" and recorder.summary["attacks"]["errors"] == 4


def test_a_failing_client_is_reported_not_hidden(tmp_path):
    s = small(tmp_path, attack="none")
    recorder, lines = run_local(s, fail_client=1)
    rounds = read(Path(s.out) / "rounds.jsonl")
    assert all(len(r["failed_clients"]) == 1 and "disk full" in r["failed_clients"][0]["reason"] for r in rounds)
    assert any("failed" in line and "disk full" in line for line in lines)


def test_interrupted_run_keeps_completed_rounds(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = task.evaluate_model

    def evaluate_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # round 0, round 1, then Ctrl-C during round 2's evaluation
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(task, "evaluate_model", evaluate_then_interrupt)
    s = small(tmp_path, rounds=3)
    with pytest.raises(KeyboardInterrupt):
        run_local(s)
    out = Path(s.out)
    assert [r["round"] for r in read(out / "rounds.jsonl")] == [1]
    assert {(r["round"], r["client"]) for r in read(out / "leakage.jsonl")} >= {(1, 0), (1, 1)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == 1


def test_attack_none_runs_no_attack_code(tmp_path, monkeypatch):
    import fedsim.attack_actor as attack_actor
    import fedsim.server_app as server_app

    def forbidden(*args, **kwargs):
        raise AssertionError("attack code ran with --attack none")

    monkeypatch.setattr(attack_actor, "make_attacker", forbidden)
    monkeypatch.setattr(server_app, "make_attacker", forbidden)
    monkeypatch.setattr(attack_actor, "RayAttacker", forbidden)
    monkeypatch.setattr(CuriousServer, "__init__", forbidden)
    s = small(tmp_path, attack="none", attack_backend="ray")
    recorder, lines = run_local(s)
    assert recorder.summary["status"] == "completed" and recorder.summary["rouge1"] is None
    assert not (Path(s.out) / "leakage.jsonl").exists()
    import ray

    assert not ray.is_initialized()


def test_flwr_run_configuration_parses_and_loads():
    from flwr.cli.config_utils import load_and_validate
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    config, warnings = load_and_validate(ROOT / "pyproject.toml", check_module=True)
    flwr = config["tool"]["flwr"]
    components = flwr["app"]["components"]
    module, attr = components["serverapp"].split(":")
    assert isinstance(getattr(__import__(module, fromlist=[attr]), attr), ServerApp)
    module, attr = components["clientapp"].split(":")
    assert isinstance(getattr(__import__(module, fromlist=[attr]), attr), ClientApp)
    settings = Settings.from_run_config(flwr["app"]["config"])
    assert settings == Settings(out=settings.out)  # `flwr run .` runs the same default as `fedleak simulate`
    assert Settings.from_run_config(settings.to_run_config()) == settings
    assert "federations" not in flwr  # flwr would rewrite pyproject.toml to migrate it (pyproject comment)
    raw = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert raw["project"]["scripts"]["fedleak"] == "fedsim.cli:main"  # the rest of pyproject is untouched


@pytest.mark.parametrize("argv,needle", [
    (["--mode", "fedprox"], "--mode"),
    (["--clients", "0"], "--clients"),
    (["--partition", "dirichlet:-1"], "dirichlet"),
    (["--attack-clients", "zero"], "--attack-clients"),
    (["--init", "normal:-2"], "init"),
    (["--dataset", "mnist"], "mnist"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    from fedsim.cli import main

    try:
        code = main(["simulate", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and needle in err


def test_eval_every_evaluates_every_kth_round_and_the_last_and_reports_the_last_evaluated(tmp_path):
    """--eval-every 2 over 3 rounds: dev accuracy after rounds 2 and 3 (the last), none after round 1; the summary's
    final accuracy is round 3's and the same as an every-round run's (evaluation does not change training)."""
    sparse, lines = run_local(small(tmp_path, rounds=3, eval_every=2, attack="none", out=str(tmp_path / "sparse")))
    dense, _ = run_local(small(tmp_path, rounds=3, attack="none", out=str(tmp_path / "dense")))
    rows = read(tmp_path / "sparse" / "rounds.jsonl")
    assert [r["eval_accuracy"] is not None for r in rows] == [False, True, True]
    assert sparse.summary["final_accuracy_round"] == 3
    assert sparse.summary["final_accuracy"] == dense.summary["final_accuracy"] == read(tmp_path / "dense" / "rounds.jsonl")[-1]["eval_accuracy"]
    assert sparse.summary["initial_accuracy"] == dense.summary["initial_accuracy"] is not None
    assert any("round 1/3" in line and "dev acc   n/a" in line for line in lines)
