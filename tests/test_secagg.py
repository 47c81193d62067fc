"""Secure aggregation (--secagg): Flower's SecAgg+ protocol in the round, and the curious server on the aggregate.

The federations here run the real ServerApp and ClientApp code on an in-process grid (``fedsim.simulate
.InProcessGrid``: no Ray), through Flower's own SecAggPlusWorkflow and secaggplus_mod.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.common.secure_aggregation.quantization import dequantize, quantize

import fedsim.server_app as server_app
from fedsim import task
from fedsim.cli import main
from fedsim.core.train import batch_gradients
from fedsim.recorder import Recorder
from fedsim.server_app import run_server, secagg_protocol
from fedsim.simulate import InProcessGrid
from fedsim.strategies import AGGREGATE, CuriousServer, SecAggProtocol
from fedsim.strategies.secagg import aggregate_metrics
from test_federation import Capture, _task_identity, small  # noqa: F401 - _task_identity is an autouse fixture

pytestmark = pytest.mark.usefixtures("one_thread")


class Wire(InProcessGrid):
    """An in-process grid that keeps every reply the server process received from a client."""

    def __init__(self, num_clients: int) -> None:
        super().__init__(num_clients)
        self.received = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        self.received += replies
        return replies


def federation(tmp_path, name: str, **overrides):
    """One round on 2 clients: the settings, the final global weights and the grid."""
    s = small(tmp_path, out=str(tmp_path / name), rounds=1, **overrides)
    grid = Wire(s.clients)
    result = run_server(grid, s, Recorder(s, echo=lambda _: None))
    return s, result.arrays.to_torch_state_dict(), grid


def test_a_secagg_round_gives_plain_fedavg_up_to_the_protocols_quantisation(tmp_path):
    s, plain, _ = federation(tmp_path, "plain", attack="none")
    _, secure, grid = federation(tmp_path, "secure", attack="none", secagg=True)
    start = task.state_of(task.initial_model(s, 2))
    # One round: each client's update is rounded to the grid (error < one step each, unbiased), FedAvg takes their
    # mean (error < one step), and both runs round the new weights to float32 (at most one ulp between them).
    step = secagg_protocol(s).step
    tolerance = {n: step + float(torch.finfo(torch.float32).eps) * float(plain[n].abs().max()) for n in plain}
    diff = {n: (secure[n].double() - plain[n].double()).abs() for n in plain}
    assert all(float(diff[n].max()) <= tolerance[n] for n in plain)
    moved = max(float((plain[n].double() - start[n].double()).abs().max()) for n in plain)
    assert moved > 1e3 * step  # the update dwarfs the tolerance: not a check that any model meets
    # the protocol did run: its rounding shows, unbiased and at the size stochastic rounding gives
    errors = torch.cat([(secure[n].double() - plain[n].double()).flatten() for n in plain if plain[n].numel() > 1000])
    assert 0 < float(errors.abs().max()) and float(errors.std()) < step / 2
    # and the server never had an update in the clear: the clients' training replies carry no arrays
    trained = [r for r in grid.received if "fitres.parameters" in r.content]
    assert len(trained) == 2 and all(len(r.content["fitres.parameters"]) == 0 for r in trained)
    # same seed, same model: the masks are random but cancel exactly, and the rounding is seeded
    _, again, _ = federation(tmp_path, "again", attack="none", secagg=True)
    assert all(torch.equal(again[n], secure[n]) for n in secure)


def test_the_curious_server_sees_one_aggregate_per_round_and_attacks_it_as_one_batch(tmp_path, monkeypatch):
    seen, layers = [], []
    aggregate_train = CuriousServer.aggregate_train

    def spy(self, server_round, replies):
        replies = list(replies)
        seen.append([(dict(r.content["metrics"]), set(r.content.array_records)) for r in replies])
        layers.append(self)
        return aggregate_train(self, server_round, replies)

    monkeypatch.setattr(CuriousServer, "aggregate_train", spy)
    attacker = Capture()
    monkeypatch.setattr(server_app, "make_attacker", lambda *args: attacker)
    s, _, _ = federation(tmp_path, "secure", secagg=True, batch_size=2)
    assert len(seen) == 1 and len(seen[0]) == 1  # one round, one reply: the aggregate
    metrics, records = seen[0][0]
    assert metrics["clients-in-aggregate"] == 2 and metrics["client"] == AGGREGATE and records == {"arrays"}
    assert metrics["num-examples"] == 2 * s.batch_size

    (job, observation, truth), = attacker.jobs  # one job: the aggregate
    assert job.client == AGGREGATE and observation.batch_size == 2 * s.batch_size
    train = task.load_split("pii", "train", "", s.seed)
    used = [i for c in range(2) for i in task.pick_examples(
        task.client_shard("pii", "", s.partition, 2, c, s.seed), s.batch_size, s.seed, 1, c)]
    assert truth.texts == task.reference_texts(train, used, s.vocab, s.max_length)[0]  # the union, no more
    assert len(truth.texts) == 4 and len(set(truth.texts)) == 4

    # the gradient is the union's batch gradient, within the error bound the server publishes (quantisation
    # included), and that bound is close to the error itself
    start = task.model_with(s.model, 2, s.vocab, observation.model.state_dict())
    expected = batch_gradients(start, task.batch_of(train, used, s.vocab, s.max_length))
    protocol = secagg_protocol(s)
    for name, g in expected.items():
        error = float((observation.gradients[name].double() - g.double()).norm())
        bound = observation.gradient_error[name]
        assert error <= bound, name
        live = g.numel() if g.dim() < 2 else int((g != 0).any(1).sum()) * g.shape[1]  # absent rows are exact
        assert bound >= protocol.error_bound(live, 2) / (2 * s.lr)
        if g.count_nonzero() == g.numel() > 1000:  # dense tensors: the bound is no blanket
            assert bound < 2 * error, name
    records = layers[0]._annotate([{"round": 1, "client": AGGREGATE}])
    assert records[0] == {"round": 1, "client": AGGREGATE, "secagg": True, "clients_in_aggregate": 2,
                          "tokens": sum(len(ids) for ids in truth.token_ids), "hidden_size": 32}


def test_the_quantisation_bound_holds_for_flowers_own_rounding_and_is_tight():
    protocol = SecAggProtocol(clipping_range=1.0, quantization_range=2**22, max_weight=1.0)
    rng = np.random.default_rng(0)
    for clients, numel in ((2, 5), (8, 4096), (4, 200_000)):
        updates = [rng.normal(0, 0.01, numel) for _ in range(clients)]
        np.random.seed(1)  # Flower's stochastic rounding draws from numpy's global generator
        total = np.zeros(numel)
        for u in updates:  # what the server unmasks: the sum of the dequantised values
            total += dequantize(quantize([u], 1.0, 2**22), 1.0, 2**22)[0]
        error = float(np.linalg.norm(total - np.sum(updates, axis=0)))
        bound = protocol.error_bound(numel, clients)
        assert error <= bound and bound < 1.5 * math.sqrt(numel * clients) * protocol.step / 2 + 10 * protocol.step


def test_the_aggregates_metrics_charge_it_for_its_weakest_client():
    from defenses import REPORT_KEYS, Release

    def client(c, q, z=1.0, loss=0.5):
        return {"num-examples": 2, "train-loss": loss, "client": c, "secagg-clipped": c,
                **dict(zip(REPORT_KEYS, (z, q, 1, 1)))}

    metrics = aggregate_metrics([client(0, 0.01, loss=0.2), client(1, 0.02, loss=0.6), client(2, 0.015)])
    assert metrics["client"] == AGGREGATE and metrics["clients-in-aggregate"] == 3 and metrics["num-examples"] == 6
    assert metrics["train-loss"] == pytest.approx((0.2 + 0.6 + 0.5) / 3) and metrics["secagg-clipped"] == 3
    assert Release.from_metrics(metrics).sample_rate == 0.02  # the largest rate: the most epsilon
    unprotected = aggregate_metrics([client(0, 0.01), client(1, 0.5, z=0.0)])
    assert not Release.from_metrics(unprotected).private  # one client without a guarantee: none for the sum


@pytest.mark.parametrize("args,named", [
    (["--secagg", "--clients", "1"], "--clients"),
    (["--secagg-quantization-range", "0"], "--secagg-quantization-range"),
    (["--secagg", "--clients", "8", "--secagg-quantization-range", str(2**28)], "--secagg-quantization-range"),
    (["--secagg-clipping-range", "-1"], "--secagg-clipping-range"),  # argparse's own check
])
def test_a_bad_secagg_value_is_one_line_and_exit_2(args, named, capsys, tmp_path):
    try:
        code = main(["simulate", "--model", "tiny", "--out", str(tmp_path / "x"), *args])
    except SystemExit as exc:
        code = exc.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and named in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "x").exists()


def test_the_study_writes_its_tables_as_it_goes_and_ends_with_one_json_line(tmp_path, capsys, monkeypatch):
    """``experiments/secagg_study.py --quick``: tiny model, K = 2, B = 1, both protocols, and the two training runs;
    ``--resume`` then keeps every row (nothing is attacked or trained again)."""
    import json
    import stat

    from experiments import secagg_study

    out = tmp_path / "study"
    secagg_study.main(["--quick", "--out", str(out)])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(c["protocol"], c["K"], c["B"]) for c in last["cells"]] == [("plain sum", 2, 1), ("secagg", 2, 1)]
    plain, secure = last["cells"]
    assert plain["noise_spectral"] == 0 < secure["noise_spectral"] and plain["tokens"] == secure["tokens"] > 0
    assert [t["protocol"] for t in last["training"]] == ["plain", "secagg"]
    assert all(0 <= t["final_accuracy"] <= 1 and t["clipped_values"] == 0 for t in last["training"])
    md = (out / "secagg_study.md").read_text(encoding="utf-8")
    assert "| tiny | 2 | 1 | secagg |" in md and "σ_min" in md
    assert (out / "secagg_study.csv").is_file() and (out / "secagg_study_train.csv").is_file()
    assert stat.S_IMODE((out / "raw" / "secagg_study.jsonl").stat().st_mode) == 0o600

    def untouched(*args, **kwargs):
        raise AssertionError("a kept row was run again")

    for name in ("plain_cell", "secagg_cell", "train_row"):
        monkeypatch.setattr(secagg_study, name, untouched)
    again = secagg_study.main(["--quick", "--out", str(out), "--resume"])
    assert again["cells"] == last["cells"] and again["training"] == last["training"]
