"""Defenses inside the federation: the client applies them, the server accounts for them, `fedleak sweep`."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import rdp
from flwr.app import Error, Message, Metadata, MetricRecord, RecordDict
from test_federation import _one_thread, _task_identity, read, run_local, small  # noqa: F401  (fixtures too)

from defenses import Release, compute_epsilon
from fedsim import task
from fedsim.settings import Settings
from fedsim.cli import main
from fedsim.strategies import PrivacyAccounting
from fedsim.sweep import sweep


def test_dp_sgd_run_reports_growing_epsilon_matching_dp_accounting(tmp_path):
    s = small(tmp_path, defense=["dp:sigma=1,c=1"], attack="none", rounds=3)
    recorder, lines = run_local(s)
    eps = [r["epsilon"] for r in read(Path(s.out) / "rounds.jsonl")]
    assert len(eps) == 3 and all(math.isfinite(e) for e in eps) and eps[0] < eps[1] < eps[2]
    smallest_shard = min(len(task.client_shard("pii", "", "iid", 2, c, s.seed)) for c in range(2))
    expected, _ = compute_epsilon(["dp:sigma=1,c=1"], 1, smallest_shard, steps=3)
    assert eps[-1] == pytest.approx(expected, rel=1e-9)  # the largest epsilon: the client with the smallest shard
    assert recorder.summary["epsilon"] == eps[-1] and "example" in recorder.summary["epsilon_explanation"]
    assert any("ε" in line for line in lines)


@pytest.mark.parametrize("mode,steps", [("fedsgd", 1), ("fedavg", 2)])
def test_epsilon_budget_run_ends_at_its_epsilon(tmp_path, mode, steps):
    s = small(tmp_path, defense=["dp:epsilon=3,c=1"], attack="none", rounds=2, mode=mode, local_steps=steps)
    recorder, lines = run_local(s)
    summary = recorder.summary
    assert summary["epsilon"] == pytest.approx(3.0, rel=0.01)
    smallest_shard = min(len(task.client_shard("pii", "", "iid", 2, c, s.seed)) for c in range(2))
    sigma = summary["calibrated_sigma"]
    assert summary["defense_resolved"] == f"dp:sigma={sigma:g},c=1" and summary["defense_budget"] == "dp:epsilon=3,c=1"
    expected, _ = compute_epsilon([summary["defense_resolved"]], 1, smallest_shard, steps=2 * steps)
    assert summary["epsilon"] == pytest.approx(expected, rel=1e-9)  # the clients ran the calibrated sigma
    assert summary["settings"]["defense"] == "dp:epsilon=3,c=1"  # the settings as given
    assert any("privacy budget" in line and summary["defense_resolved"] in line for line in lines)


def test_update_level_budget_run_ends_at_its_epsilon(tmp_path):
    s = small(tmp_path, defense=["clip:c=1+noise:epsilon=20,delta=1e-6"], attack="none", rounds=2)
    recorder, _ = run_local(s)
    assert recorder.summary["epsilon"] == pytest.approx(20.0, rel=0.01) and recorder.summary["delta"] == 1e-6
    assert recorder.summary["defense_resolved"].startswith("clip:c=1+noise:sigma=")


def test_sweep_resolves_each_budget_with_its_own_run(tmp_path):
    base = small(tmp_path, attack="none", rounds=1)
    rows = sweep(base, ["dp:epsilon=1,c=1", "dp:epsilon=8,c=1"], ["none"], tmp_path / "sweep",
                 run=lambda s: run_local(s)[0].summary, echo=lambda _: None)
    assert [r["defense"] for r in rows] == ["dp:epsilon=1,c=1", "dp:epsilon=8,c=1"]
    assert [r["epsilon"] for r in rows] == [pytest.approx(1.0, rel=0.01), pytest.approx(8.0, rel=0.01)]
    sigmas = [read_summary(r["run_dir"])["calibrated_sigma"] for r in rows]
    assert sigmas[0] > sigmas[1] and rows[0]["epsilon_single_release"] < rows[1]["epsilon_single_release"]


def read_summary(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


# --- the accounting wrapper, on hand-made replies ----------------------------------------------------------------
def _reply(client: int, release: Release | None = None, failed: bool = False) -> Message:
    metadata = Metadata(run_id=1, message_id=f"m{client}", src_node_id=1000 + client, dst_node_id=0,
                        reply_to_message_id="x", group_id="1", created_at=time.time(), ttl=3600, message_type="train")
    if failed:
        return Message(error=Error(code=1, reason="disk full"), metadata=metadata)
    metrics = {"num-examples": 1, "train-loss": 1.0, "client": client, **(release.to_metrics() if release else {})}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), metadata=metadata)


class _Inner:
    """The wrapped strategy: records what reached it."""

    def __init__(self) -> None:
        self.got: list[list[Message]] = []

    def aggregate_train(self, server_round, replies):
        self.got.append(list(replies))
        return None, None


def _rdp_epsilon(sigma: float, q: float, steps: int, delta: float = 1e-5) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


def test_privacy_accounting_charges_what_each_client_reports_it_ran():
    inner = _Inner()
    accounting = PrivacyAccounting(inner)
    dp = lambda q: Release(1.0, q, 2, "example")  # noqa: E731 - two DP-SGD steps at rate q
    rounds = [
        [_reply(0, dp(0.01)), _reply(1, dp(0.05))],
        [_reply(0, dp(0.01)), _reply(1, failed=True)],  # client 1 fails: released nothing, not charged
        [_reply(0, dp(0.01)), _reply(1, dp(0.05)), _reply(2, Release(0.0, 1.0, 1, "none")), _reply(3)],
    ]
    for r, replies in enumerate(rounds, start=1):
        assert accounting.aggregate_train(r, replies) == (None, None)
        assert inner.got[-1] == replies  # aggregation is the wrapped strategy's, on every reply

    first, second, third = (accounting.rounds[r] for r in (1, 2, 3))
    assert first["clients"][0] == pytest.approx(_rdp_epsilon(1.0, 0.01, 2), rel=1e-9)
    assert first["clients"][1] == pytest.approx(_rdp_epsilon(1.0, 0.05, 2), rel=1e-9)
    assert first["epsilon"] == max(first["clients"].values()) and first["unprotected"] == []
    assert second["charged"] == [0] and second["clients"][1] == first["clients"][1]
    assert second["clients"][0] == pytest.approx(_rdp_epsilon(1.0, 0.01, 4), rel=1e-9)
    assert second["epsilon"] == max(second["clients"][0], first["clients"][1])  # the largest so far
    # client 2 ran a defense with no guarantee, client 3 reported none: both unprotected, named, epsilon inf
    assert third["unprotected"] == [2, 3] and accounting.unprotected == {2, 3}
    assert math.isinf(third["clients"][2]) and math.isinf(third["clients"][3]) and math.isinf(third["epsilon"])
    assert third["clients"][1] == pytest.approx(_rdp_epsilon(1.0, 0.05, 4), rel=1e-9)
    assert accounting.epsilon(0) is None and accounting.epsilon(3) == third["epsilon"]


def test_noise_without_clipping_has_no_finite_epsilon(tmp_path):
    s = small(tmp_path, defense=["noise:sigma=0.1"], attack="none", rounds=1)
    recorder, _ = run_local(s)
    assert read(Path(s.out) / "rounds.jsonl")[0]["epsilon"] == "inf"
    assert "unbounded" in recorder.summary["epsilon_explanation"] or "no clip" in recorder.summary["epsilon_explanation"]


def test_no_defense_reports_no_epsilon(tmp_path):
    s = small(tmp_path, attack="none", rounds=1)
    run_local(s)
    assert read(Path(s.out) / "rounds.jsonl")[0]["epsilon"] is None


def test_strong_noise_on_the_client_lowers_what_the_server_recovers(tmp_path):
    settings = dict(rounds=1, clients=1, attack_iterations=300)
    clean, _ = run_local(small(tmp_path, out=str(tmp_path / "clean"), **settings))
    noisy, _ = run_local(small(tmp_path, out=str(tmp_path / "noisy"), defense=["noise:sigma=1"], **settings))
    assert clean.summary["rouge1"] > 0.6
    assert noisy.summary["rouge1"] < clean.summary["rouge1"] - 0.3


def test_sweep_writes_tradeoff_rows_plot_and_run_dirs(tmp_path):
    base = small(tmp_path, rounds=1)
    rows = sweep(base, ["none", "clip:c=1+noise:sigma=0.5"], ["tag"], tmp_path / "sweep",
                 run=lambda s: run_local(s)[0].summary, echo=lambda _: None)
    assert [(r["defense"], r["attack"]) for r in rows] == [("none", "tag"), ("clip:c=1+noise:sigma=0.5", "tag")]
    with open(tmp_path / "sweep" / "tradeoff.csv") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[:6] == ["defense", "attack", "epsilon", "epsilon_single_release", "n_seeds", "accuracy_mean"]
    assert {"rouge1_mean", "rouge1_hi", "rouge2_mean", "n_updates", "n_failed"} <= set(table[0])
    assert table[0]["epsilon"] == "inf" and math.isfinite(float(table[1]["epsilon"]))
    # the seed paper's single release: the analytic Gaussian mechanism at multiplier sigma / c = 0.5
    assert float(table[1]["epsilon_single_release"]) == pytest.approx(dp_accounting.get_epsilon_gaussian(0.5, 1e-5))
    assert all(0 <= float(r["rouge1_mean"]) <= 1 for r in table)
    assert (tmp_path / "sweep" / "frontier.png").stat().st_size > 10_000
    assert all((Path(r["run_dir"]) / "rounds.jsonl").is_file() for r in rows)


@pytest.mark.parametrize("argv,needle", [
    (["simulate", "--defense", "noise:sigma=-1"], "sigma"),
    (["simulate", "--defense", "zap:x=1"], "zap"),
    (["sweep", "--defense", "none", "--defense", "dp:sigma=1"], "dp"),
    (["sweep", "--attack", "telepathy"], "telepathy"),
    (["simulate", "--defense", "dp:epsilon=-1,c=1"], "epsilon"),
    (["simulate", "--defense", "dp:epsilon=1,c=1,delta=1.5"], "delta"),
    (["sweep", "--defense", "dp:epsilon=1,c=1", "--defense", "clip:c=1+noise:epsilon=0"], "epsilon"),
    # well-formed but impossible for this run (q = 1 over 2 rounds: RDP cannot reach 1e-4): fails before Ray starts
    (["simulate", "--model", "tiny", "--init", "normal:0.02", "--rounds", "2", "--clients", "2", "--attack", "none", "--batch-size", "1000",
      "--defense", "dp:epsilon=1e-4,c=1", "--out", "{tmp}/run"], "no noise"),
])
def test_bad_defense_or_attack_is_one_line_exit_2(capsys, tmp_path, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err


def test_sweep_resume_reads_completed_runs_and_reruns_changed_or_unfinished_ones(tmp_path):
    """An interrupted sweep picks up where it stopped: completed runs of the same settings are read, not rerun."""
    import json

    calls: list[str] = []

    def fake_run(settings, status="completed"):
        calls.append(settings.out)
        Path(settings.out).mkdir(parents=True, exist_ok=True)
        summary = {"status": status, "final_accuracy": 0.5, "rouge1": 0.25, "epsilon": None,
                   "settings": settings.to_run_config()}
        (Path(settings.out) / "summary.json").write_text(json.dumps(summary))
        return summary

    base = Settings(model="tiny", init="normal:0.02", dataset="pii", rounds=1, attack="none")
    first = sweep(base, ["none", "noise:sigma=0.1"], ["none"], tmp_path, run=fake_run, echo=lambda _: None)
    assert len(calls) == 2
    calls.clear()
    again = sweep(base, ["none", "noise:sigma=0.1"], ["none"], tmp_path, run=fake_run, echo=lambda _: None,
                  resume=True)
    assert calls == [] and [r["accuracy_mean"] for r in again] == [r["accuracy_mean"] for r in first] == [0.5, 0.5]
    assert [r["runs_reused"] for r in again] == [1, 1]
    sweep(Settings(model="tiny", init="normal:0.02", dataset="pii", rounds=2, attack="none"), ["none"], ["none"], tmp_path,
          run=fake_run, echo=lambda _: None, resume=True)  # other settings: rerun
    assert len(calls) == 1
    fake_run(Settings(model="tiny", init="normal:0.02", dataset="pii", rounds=1, attack="none", out=calls[0]), status="interrupted")
    calls.clear()
    sweep(base, ["none"], ["none"], tmp_path, run=fake_run, echo=lambda _: None, resume=True)
    assert len(calls) == 1  # an interrupted run is run again
