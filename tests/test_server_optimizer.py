"""--server-optimizer: FedAdam on the server (the clients' mean update as Adam's pseudo-gradient), clients unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from fedsim import task
from fedsim.cli import main
from fedsim.core.errors import UsageError
from fedsim.strategies import FedAdamWithLog, FedAvgWithLog, RoundLog, layer, parse_server_optimizer
from test_federation import (_Nodes, _copy, _one_thread, _task_identity, LocalGrid, read, run_local,  # noqa: F401
                             small)


def test_fedadam_moves_every_updated_weight_by_the_same_step_in_the_mean_updates_direction(tmp_path):
    """Round 1 of Adam: m = (1 - b1) d and v = (1 - b2) d^2, so each weight the clients changed moves by the same
    bias-corrected step eta_t, in the sign of the mean update d, whatever d's size; weights no client changed (the
    embedding rows of tokens nobody used) stay. FedAvg would move each weight by d itself. The clients are sent the
    plain global weights and train as under FedAvg."""
    s = small(tmp_path, attack="none", mode="fedavg", local_steps=2, batch_size=2, lr=0.05,
              server_optimizer="fedadam:eta=0.001")
    train = task.load_split("pii", "train", "", s.seed)
    global_arrays = ArrayRecord(task.state_of(task.initial_model(s, train.num_labels)))
    from fedsim.recorder import Recorder
    from fedsim.server_app import build_strategy

    strategy = build_strategy(s, train, Recorder(s, echo=lambda _: None))
    assert isinstance(layer(strategy, RoundLog), FedAdamWithLog)
    grid = LocalGrid(2)
    messages = list(strategy.configure_train(1, global_arrays, ConfigRecord(s.client_config()), _Nodes(list(grid.nodes))))
    replies = grid.send_and_receive(messages)
    mean, _ = FedAvgWithLog().aggregate_train(1, [_copy(r, drop_truth=True) for r in replies])
    adam, metrics = strategy.aggregate_train(1, replies)
    assert metrics["clients"] == 2

    before = {k: v.numpy() for k, v in global_arrays.items()}
    assert {adam[k].numpy().dtype for k in before} == {before[k].dtype for k in before} == {np.dtype("float32")}
    d = np.concatenate([(mean[k].numpy() - before[k]).ravel() for k in before])
    step = np.concatenate([(adam[k].numpy() - before[k]).ravel() for k in before])
    moved = np.abs(d) > 1e-6
    assert moved.sum() > 1000 and (~moved).sum() > 1000  # the test means something on both sides
    eta_t = 0.001 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)  # Flower's bias correction at round 1
    clear = np.abs(d) > 1e-4  # where Adam's epsilon (1e-8 against sqrt(v) = 0.1 |d|) is negligible
    assert clear.sum() > 1000
    np.testing.assert_allclose(np.abs(step[clear]), eta_t, rtol=2e-3)
    assert np.all(np.sign(step[moved]) == np.sign(d[moved]))
    assert np.all(np.abs(step[moved]) <= eta_t * 1.001)
    assert np.all(step[np.abs(d) == 0] == 0)
    assert np.abs(d[clear]).max() / np.abs(d[clear]).min() > 10  # FedAvg's steps differ this much; Adam's do not

    # Round 2 starts from Adam's weights, which must be what the clients hold (float32): then a client's update is
    # zero on the embedding rows of tokens it did not use, and the curious server reads it exactly. (Flower's Adam
    # returns float64; clients rounded it, and every row of every update differed by that rounding.)
    messages = list(strategy.configure_train(2, adam, ConfigRecord(s.client_config()), _Nodes(list(grid.nodes))))
    name = next(k for k in before if k.endswith("word_embeddings.weight"))
    for reply in grid.send_and_receive(messages):
        changed = np.abs(reply.content["arrays"][name].numpy() - adam[name].numpy()).sum(axis=1) > 0
        assert 0 < changed.sum() <= s.local_steps * s.batch_size * s.max_length, changed.sum()


def test_a_fedadam_federation_runs_and_records_its_optimizer(tmp_path):
    recorder, _ = run_local(small(tmp_path, attack="none", rounds=2, server_optimizer="fedadam:eta=0.001"))
    assert recorder.summary["status"] == "completed"
    assert recorder.summary["settings"]["server-optimizer"] == "fedadam:eta=0.001"
    assert [r["round"] for r in read(tmp_path / "run" / "rounds.jsonl")] == [1, 2]


@pytest.mark.parametrize("spec", ["adam", "fedadam", "fedadam:eta=0", "fedadam:eta=x", "fedadam:lr=0.1", "fedavg:eta=1"])
def test_a_bad_server_optimizer_is_one_line_exit_2(spec, capsys):
    with pytest.raises(UsageError):
        parse_server_optimizer(spec)
    assert main(["simulate", "--server-optimizer", spec, "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and repr(spec) in err[0] and "fedadam:eta=ETA" in err[0]
