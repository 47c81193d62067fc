"""`fedleak sweep` as the frontier tool (issue #12): aggregation over seeds and updates, the verdict, the label
layout of frontier.png, and one tiny real sweep whose leakage comes from the runs whose accuracy it reports."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_federation import _one_thread, _task_identity, read, run_local, small  # noqa: F401  (fixtures too)

from fedsim.cli import main
from fedsim.settings import Settings
from fedsim.frontier.plot import LABEL_BOX, label_positions, pareto_front, plot_frontier
from fedsim.frontier.stats import aggregate, difference_interval, mean_interval, mean_sd
from fedsim.frontier.verdict import verdict
from fedsim.report import render
from fedsim.report_html import load_run, render_html
from fedsim.sweep import sweep


# --- aggregation ---------------------------------------------------------------------------------------------------
def test_mean_interval_is_the_t_interval_and_degenerate_cases_say_so():
    xs = [0.2, 0.5, 0.3, 0.9]
    mean, lo, hi = mean_interval(xs)
    half = stats.t.ppf(0.975, len(xs) - 1) * np.std(xs, ddof=1) / math.sqrt(len(xs))
    assert mean == pytest.approx(np.mean(xs)) and (lo, hi) == pytest.approx((mean - half, mean + half))
    assert mean_interval([0.4]) == (0.4, None, None)  # one update: no interval
    assert mean_interval([0.3, 0.3]) == (0.3, 0.3, 0.3)
    assert mean_interval([]) == (None, None, None)
    assert mean_sd([0.5, None, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))


def test_difference_interval_is_welch():
    a, b = [0.80, 0.82, 0.78], [0.70, 0.60, 0.75, 0.65]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch–Satterthwaite
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff, lo, hi = difference_interval(a, b)
    assert diff == pytest.approx(np.mean(a) - np.mean(b)) and (lo, hi) == pytest.approx((diff - half, diff + half))
    assert difference_interval([0.8], b)[1:] == (None, None)


def _run(defense, seed, acc, scores, eps=None, attack="best", errors=0):
    return {"defense": defense, "attack": attack, "seed": seed, "final_accuracy": acc, "epsilon": eps,
            "updates": [{"rouge1": r1, "rouge2": r1 / 2} for r1 in scores] + [{"error": True}] * errors,
            "run_dir": f"/runs/{defense}/{seed}"}


def test_aggregate_pools_seeds_for_accuracy_and_every_update_for_leakage():
    runs = [_run("none", 0, 0.80, [0.9, 1.0]), _run("noise", 0, 0.70, [0.1, 0.2, 0.3], eps=4.0, errors=1),
            _run("none", 1, 0.84, [0.8, 1.0]), _run("noise", 1, 0.66, [0.0, 0.2], eps=5.0)]
    none, noise = aggregate(runs)
    assert (noise["defense"], noise["n_seeds"], none["epsilon"], noise["epsilon"]) == ("noise", 2, math.inf, 5.0)
    assert noise["accuracy_mean"] == pytest.approx(0.68)
    assert noise["accuracy_sd"] == pytest.approx(np.std([0.70, 0.66], ddof=1))
    cost = difference_interval([0.80, 0.84], [0.70, 0.66])
    assert noise["accuracy_cost_points"] == pytest.approx(14.0)
    assert (noise["accuracy_cost_lo"], noise["accuracy_cost_hi"]) == pytest.approx((100 * cost[1], 100 * cost[2]))
    assert none["accuracy_cost_points"] == 0.0 and none["accuracy_cost_lo"] is None  # the reference itself
    scores = [0.1, 0.2, 0.3, 0.0, 0.2]  # both seeds' updates, the failed one apart
    assert (noise["n_updates"], noise["n_failed"]) == (5, 1)
    assert (noise["rouge1_mean"], noise["rouge1_lo"], noise["rouge1_hi"]) == pytest.approx(mean_interval(scores))
    assert noise["rouge2_mean"] == pytest.approx(np.mean(scores) / 2)
    assert noise["rouge1_failures_as_zero"] == pytest.approx(sum(scores) / 6)
    assert aggregate([_run("noise", 0, 0.7, [0.1])])[0]["accuracy_cost_points"] is None  # no `none`: no cost


# --- the verdict ---------------------------------------------------------------------------------------------------
def _row(defense, attack, acc, r1, lo, hi, n=30, eps=1.0, cost=None):
    return {"defense": defense, "attack": attack, "epsilon": eps, "n_seeds": 3, "accuracy_mean": acc,
            "accuracy_sd": 0.01, "accuracy_cost_points": cost, "accuracy_cost_lo": None if cost is None else cost - 1,
            "accuracy_cost_hi": None if cost is None else cost + 1, "n_updates": n, "n_failed": 0,
            "rouge1_mean": r1, "rouge1_lo": lo, "rouge1_hi": hi, "rouge2_mean": r1 / 2}


TABLE = [
    _row("none", "best", 0.85, 0.95, 0.90, 0.99, eps=math.inf, cost=0.0),
    _row("noise:sigma=1", "best", 0.60, 0.05, 0.02, 0.08, cost=25.0),  # stops it, but costs most
    _row("noise:sigma=0.3", "best", 0.75, 0.12, 0.09, 0.15, cost=10.0),  # the answer
    _row("noise:sigma=0.3", "tag", 0.75, 0.10, 0.08, 0.19, cost=10.0),  # second attack: upper end still < 0.2
    _row("clip:c=1", "best", 0.84, 0.15, 0.05, 0.25, cost=1.0),  # mean below 0.2, upper end not
    _row("prune:p=0.9", "tag", 0.83, 0.05, 0.01, 0.09, cost=2.0),
    _row("prune:p=0.9", "best", 0.83, 0.30, 0.25, 0.35, cost=2.0),  # its strongest attack leaks
    _row("dp:sigma=9,c=1", "best", 0.86, 0.0, None, None, n=1, cost=-1.0),  # one update: no interval, no pass
]


def test_the_verdict_picks_the_cheapest_setting_below_the_threshold_at_the_upper_end():
    v = verdict(TABLE)
    s = v["setting"]
    assert v["stopped"] and s["defense"] == "noise:sigma=0.3" and s["closest_attack"] == "best"
    assert s["leakage_bound"] == 0.19 and s["accuracy_cost_points"] == 10.0 and s["accuracy_cost_ci95"] == [9.0, 11.0]
    assert s["epsilon"] == 1.0 and s["n_updates"] == 30 and s["attacks_in_grid"] == ["best", "tag"]
    assert v["text"][0].startswith("VERDICT: noise:sigma=0.3 (ε=1) is the cheapest") and "rule" in v["text"][-1]
    assert any("accuracy cost 10.0 points" in line and "9.0 to 11.0" in line for line in v["text"])


def test_without_a_qualifying_setting_the_verdict_says_so_and_names_the_least_leaking():
    rows = [r for r in TABLE if r["defense"] in ("none", "clip:c=1", "prune:p=0.9")]
    v = verdict(rows)
    assert not v["stopped"] and v["setting"] is None
    assert v["text"][0].startswith("VERDICT: no setting in this grid stops the attack")
    assert v["lowest_leakage"]["defense"] == "clip:c=1" and "clip:c=1" in v["text"][1]
    nothing = verdict([{**TABLE[0], "n_updates": 0, "rouge1_mean": None, "rouge1_lo": None, "rouge1_hi": None}])
    assert not nothing["stopped"] and "no attacked update was scored" in nothing["text"][0]


# --- frontier.png ----------------------------------------------------------------------------------------------------
def test_labels_never_share_a_spot_even_for_coinciding_points():
    points = [(0.5, 0.5)] * 6 + [(0.52, 0.49), (0.98, 0.98), (0.0, 0.0), (0.0, 0.0)]
    spots = label_positions(points)
    assert spots == label_positions(points)  # deterministic
    w, h = LABEL_BOX
    for i, a in enumerate(spots):
        for b in spots[i + 1:]:
            assert abs(a[0] - b[0]) >= w or abs(a[1] - b[1]) >= h, (a, b)  # the boxes do not overlap
        assert all(abs(a[0] - p[0]) >= w / 2 or abs(a[1] - p[1]) >= h / 2 for p in points)  # nor cover a point


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(0.8, 0.9), (0.7, 0.1), (0.6, 0.2), (0.75, 0.5), (0.7, 0.1)]
    assert pareto_front(points) == [1, 4, 3, 0]  # (0.6, 0.2) is beaten by (0.7, 0.1)


def test_the_figure_draws_coinciding_settings_and_integer_rounds(tmp_path):
    rows = aggregate([_run("none", 0, 0.8, [0.5, 0.6]), _run("noise", 0, 0.8, [0.5, 0.6], eps=2.0)])
    fig = plot_frontier(rows, {"none": [(1, 0.7), (2, 0.6), (3, 0.5)]}, command="fedleak sweep", reused=1, runs=2)
    fig.canvas.draw()
    leak, _, loss = fig.axes[:3]
    labels = [t.get_text() for t in leak.texts]
    assert labels == ["1 ε=∞", "2 ε=2"]
    boxes = [t.get_window_extent() for t in leak.texts]
    assert not boxes[0].overlaps(boxes[1])
    assert all(float(t).is_integer() for t in loss.get_xticks())
    fig.savefig(tmp_path / "f.png")


# --- the command -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_bad_seeds_is_one_line_exit_2(capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--seeds", value])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--seeds" in err and value in err


def test_a_tiny_sweep_over_two_seeds_scores_every_update_of_the_runs_it_reports(tmp_path):
    base = small(tmp_path, rounds=2, clients=2, attack_iterations=3, eval_examples=0)
    lines: list[str] = []
    rows = sweep(base, ["none", "noise:sigma=0.5"], ["tag"], tmp_path / "sweep", run=lambda s: run_local(s)[0].summary,
                 echo=lines.append, seeds=2, command="fedleak sweep --seeds 2")
    out = tmp_path / "sweep"
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["noise_sigma=0.5__tag__seed3", "noise_sigma=0.5__tag__seed4", "none__tag__seed3",
                    "none__tag__seed4"]
    with open(out / "runs.csv") as fh:
        runs = list(csv.DictReader(fh))
    assert [(r["defense"], r["seed"]) for r in runs] == [("none", "3"), ("noise:sigma=0.5", "3"), ("none", "4"),
                                                         ("noise:sigma=0.5", "4")]
    for row in rows:
        own = [d for d in row["run_dirs"]]
        assert len(own) == 2 and row["n_seeds"] == 2
        per_run = [read(Path(d) / "leakage.jsonl") for d in own]
        assert all(per_run)  # both seeds' runs were attacked, and all of their updates count
        leaks = [r for records in per_run for r in records]
        scored = [r["rouge1"] for r in leaks if "error" not in r]
        assert row["n_updates"] == len(scored) and row["n_failed"] == len(leaks) - len(scored)
        assert row["rouge1_mean"] == pytest.approx(np.mean(scored))
        accs = [json.loads((Path(d) / "summary.json").read_text())["final_accuracy"] for d in own]
        assert row["accuracy_mean"] == pytest.approx(np.mean(accs))
        assert row["accuracy_sd"] == pytest.approx(np.std(accs, ddof=1))
    v = json.loads((out / "verdict.json").read_text())
    assert lines[-len(v["text"]):] == v["text"] and v["text"][0].startswith("VERDICT")
    assert (out / "frontier.png").stat().st_size > 20_000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["seeds"] == [3, 4] and summary["runs_finished"] == 4
    assert v["text"][0] in render(out)  # `fedleak report` shows the verdict
    page = render_html(load_run(out))  # ... and --html every run's updates, by seed
    total = sum(r["n_updates"] + r["n_failed"] for r in rows)
    assert f"Attacked updates ({total})" in page and "none / tag / seed 4" in page and "--seeds 2" in page


def test_the_command_passes_seeds_the_worst_case_attack_and_its_own_command_line(tmp_path, monkeypatch):
    import fedsim.sweep

    calls = []
    monkeypatch.setattr(fedsim.sweep, "sweep", lambda *a, **k: calls.append((a, k)) or [])
    assert main(["sweep", "--model", "tiny", "--init", "uniform:0.1", "--seeds", "3", "--defense", "none",
                 "--out", str(tmp_path / "s")]) == 0
    (base, defenses, attacks, out), kw = calls[0]
    assert attacks == ["best"] and defenses == ["none"] and kw["seeds"] == 3 and base.eval_examples == 0
    assert kw["command"] == (f"fedleak sweep --model tiny --init uniform:0.1 --out {tmp_path / 's'} --defense none "
                             "--attack best --seeds 3")


def test_an_unfinished_run_is_listed_but_left_out_of_the_aggregates(tmp_path):
    def fake(settings):
        Path(settings.out).mkdir(parents=True)
        (Path(settings.out) / "leakage.jsonl").write_text(json.dumps({"rouge1": 0.5, "rouge2": 0.1}) + "\n")
        return {"status": "interrupted" if settings.seed == 1 else "completed",
                "final_accuracy": 0.6 + settings.seed / 10, "epsilon": None}

    lines: list[str] = []
    rows = sweep(Settings(model="tiny", dataset="pii", rounds=1, attack="none"), ["none"], ["tag"], tmp_path,
                 run=fake, echo=lines.append, seeds=2)
    assert (rows[0]["n_seeds"], rows[0]["accuracy_mean"], rows[0]["n_updates"]) == (1, 0.6, 1)
    with open(tmp_path / "runs.csv") as fh:
        assert [r["status"] for r in csv.DictReader(fh)] == ["completed", "interrupted"]
    assert any("ended interrupted" in line for line in lines)
    assert json.loads((tmp_path / "summary.json").read_text())["runs_incomplete"] == 1
