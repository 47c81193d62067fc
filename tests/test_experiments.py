"""Every reproduction script's ``--quick`` runs (tiny model, built-in sentences, no ../shared) and writes its files."""

from __future__ import annotations

import csv
import importlib
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METRIC_COLUMNS = [f"{m}_{s}" for m in ("recover_rate", "rouge1", "rouge2", "rougeL") for s in ("mean", "std", "ci95")]
# script -> (key columns of its CSV, whether it draws a PNG, whether its CSV holds leakage metrics)
# Result scripts whose quick run is tested in their own test module rather than by test_quick_run_writes_tables.
TESTED_ELSEWHERE = {"secagg_study": "tests/test_secagg.py", "reference_frontier": "tests/test_reference_frontier.py"}
SCRIPTS = {
    "table2_model_size": (["model", "n"], False, True),
    "fig5_tag_vs_dlg": (["method", "n"], True, True),
    "table4_init": (["init", "n"], False, True),
    "table5_pretrained": (["dataset", "weights", "n"], False, True),
    "table6_length": (["input", "n"], False, True),
    "table7_vocab": (["vocab", "vocab_size", "n"], False, True),
    "fig2_loss_curves": (["model", "iteration", "loss_mean", "relative_loss_mean"], True, False),
    "fig3_pca": (["sentence", "iteration", "l2_to_true", "cosine_to_true", "token_accuracy"], True, False),
    "noise_sweep": (["sigma", "defense", "n", "epsilon_rounds", "epsilon_single", "final_accuracy",
                     "final_train_loss"], True, True),
}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def number(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def local_federation(settings) -> dict:
    """The sweep's federations through the real ServerApp/ClientApp in this process (``LocalGrid`` from
    test_federation): Ray's start-up would cost minutes per run on a loaded 2-core machine."""
    from flwr.supercore.task_identity import TaskIdentity
    from test_federation import run_local

    names = ("_task_id", "_run_id", "_node_id")  # outside a Flower run nobody sets these (see test_federation)
    before = {name: getattr(TaskIdentity, name) for name in names}
    try:
        for name in names:
            setattr(TaskIdentity, name, before[name] or 1)
        recorder, _ = run_local(settings)
    finally:
        for name, value in before.items():
            setattr(TaskIdentity, name, value)
    return recorder.summary


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory):
    """``quick(name)``: the output directory of the script's ``--quick`` run (each script runs once per module)."""
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(name)
            extra = {"federation": local_federation} if name == "noise_sweep" else {}
            importlib.import_module(f"experiments.{name}").main(["--quick", "--out", str(out), "--threads", "1"], **extra)
            done[name] = out
        return done[name]

    return run


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_quick_run_writes_tables(name: str, quick) -> None:
    columns, has_png, leakage = SCRIPTS[name]
    tmp_path = quick(name)
    rows = read_csv(tmp_path / f"{name}.csv")
    assert rows, f"{name}.csv is empty"
    assert set(columns) <= set(rows[0]), f"{name}.csv lacks {set(columns) - set(rows[0])}"
    md = (tmp_path / f"{name}.md").read_text(encoding="utf-8")
    assert md.startswith("# ") and "| --- |" in md and "Run: quick" in md
    if has_png:
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    if leakage:
        assert set(METRIC_COLUMNS) <= set(rows[0])
        for row in rows:
            if row.get("method") == "tag/dlg":  # fig5's ratio row
                continue
            n = int(row["n"])
            assert n >= 1
            for m in ("recover_rate", "rouge1", "rouge2", "rougeL"):
                mean, std = number(row[f"{m}_mean"]), number(row[f"{m}_std"])
                assert 0.0 <= mean <= 1.0, (name, m, row)
                assert std >= 0.0 if n > 1 else math.isnan(std), (name, m, row)  # no spread from one sentence
    raw = tmp_path / "raw" / f"{name}.jsonl"
    assert raw.is_file() and private(raw), "per-sentence reconstructions must be written 0600"


def test_fig5_examples_are_private(quick) -> None:
    tmp_path = quick("fig5_tag_vs_dlg")
    examples = tmp_path / "fig5_tag_vs_dlg_examples.md"
    assert private(examples)
    text = examples.read_text(encoding="utf-8")
    assert "best TAG ROUGE-L" in text and "| reference | TAG |" in text
    ratio = [r for r in read_csv(tmp_path / "fig5_tag_vs_dlg.csv") if r["method"] == "tag/dlg"]
    assert len(ratio) == 1


def test_fig3_reports_the_motion_from_start_to_end(quick) -> None:
    tmp_path = quick("fig3_pca")
    rows = read_csv(tmp_path / "fig3_pca.csv")
    assert int(rows[0]["iteration"]) == 0 and int(rows[-1]["iteration"]) == 20
    assert all(0.0 <= float(r["token_accuracy"]) <= 1.0 and -1.0 <= float(r["cosine_to_true"]) <= 1.0 for r in rows)
    assert private(tmp_path / "fig3_pca.png")  # it labels the private tokens


def test_noise_sweep_renders_with_fedleak_report(quick) -> None:
    from fedsim.report import render

    tmp_path = quick("noise_sweep")
    rows = read_csv(tmp_path / "noise_sweep.csv")
    assert [float(r["sigma"]) for r in rows] == [0.0, 0.1]
    assert rows[0]["epsilon_rounds"] == "inf" and math.isfinite(float(rows[1]["epsilon_single"]))
    assert 0.0 <= float(rows[1]["final_accuracy"]) <= 1.0
    text = render(tmp_path / "raw" / "noise_sweep_runs")
    assert "Defense sweep" in text and "noise:sigma=0.1" in text


def test_script_runs_as_a_file(tmp_path: Path) -> None:
    """``python experiments/NAME.py`` works from a clone (the scripts put the repository on sys.path themselves)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("FEDLEAK_GLUE_DIR", None)
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "table2_model_size.py"), "--quick", "--out",
                           str(tmp_path), "--threads", "1", "--iterations", "3"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_csv(tmp_path / "table2_model_size.csv")[0]["model"] == "tiny"


def test_resume_keeps_finished_sentences_and_reruns_a_changed_setting(tmp_path: Path, monkeypatch) -> None:
    """``--resume`` reuses the raw rows of the same setting (no attack runs) and attacks anything that changed."""
    from experiments import common, table4_init

    argv = ["--quick", "--out", str(tmp_path), "--threads", "1", "--iterations", "3"]
    first = table4_init.main(argv)
    assert first and not any(r.get("resumed") for r in first)
    table = (tmp_path / "table4_init.csv").read_text()

    def no_attack(*args, **kwargs):
        raise AssertionError("a kept sentence was attacked again")

    with monkeypatch.context() as m:
        m.setattr(common, "iter_attacks", no_attack)
        again = table4_init.main(argv + ["--resume"])
    assert [r["rouge1"] for r in again] == [r["rouge1"] for r in first] and all(r["resumed"] for r in again)
    assert (tmp_path / "table4_init.csv").read_text() == table
    changed = table4_init.main(argv[:-1] + ["4", "--resume"])  # other iterations: a different attack
    assert len(changed) == len(first) and not any(r.get("resumed") for r in changed)


def test_reproduce_script_runs_every_result() -> None:
    """``experiments/reproduce.sh`` (the full default reproduction) names every result script, and parses."""
    text = (ROOT / "experiments" / "reproduce.sh").read_text()
    scripts = {p.stem for p in (ROOT / "experiments").glob("*.py")
               if not p.stem.startswith(("bench_", "common", "paper", "claims", "__"))}
    assert scripts == set(SCRIPTS) | set(TESTED_ELSEWHERE)
    assert [s for s in [*scripts, "claims"] if s not in text] == []  # claims: last, over every table
    assert subprocess.run(["bash", "-n", str(ROOT / "experiments" / "reproduce.sh")]).returncode == 0


def test_a_script_given_bad_input_says_so_in_one_line_with_exit_2(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "table4_init.py"), "--data-dir",
                           str(tmp_path / "no-glue"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "no-glue" in done.stderr and "Traceback" not in done.stderr


COLA_DEV = ["The sailors rode the breeze clear of the rocks.", "The weights made the rope stretch over the pulley.",
            "The mechanical doll wriggled itself loose.", "If you had eaten more, you would want less.",
            "As you eat the most, you want the least.", "The more you would want, the less you would eat."]


def test_bench_batch_writes_tables_and_ends_with_one_json_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """``experiments/bench_batch.py``: tiny model, B = 2, one batch per kind (CoLA from a small GLUE-layout file
    written here), then ``--resume`` keeps every batch; the rank limit N <= d is stated per batch."""
    import json

    from experiments import bench_batch

    glue = tmp_path / "glue" / "CoLA"
    glue.mkdir(parents=True)
    (glue / "dev.tsv").write_text("".join(f"src\t{i % 2}\t\t{t}\n" for i, t in enumerate(COLA_DEV)))
    out = tmp_path / "out"
    argv = ["--models", "tiny", "--batch-sizes", "2", "--batches", "1", "--data-dir", str(tmp_path / "glue"),
            "--out", str(out), "--threads", "1", "--time-budget", "30"]
    rows = bench_batch.main(argv)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(c["kind"], c["B"], c["n"]) for c in last["cells"]] == [(k, 2, 1) for k in bench_batch.KINDS]
    assert {r["kind"] for r in rows} == set(bench_batch.KINDS) and len(rows) == 3
    for row, cell in zip(rows, last["cells"]):
        assert row["hidden"] == 32 and row["tokens"] > 2 * 2  # tiny: d = 32; [CLS] and [SEP] at least, per sentence
        assert row["over_rank_limit"] == (row["tokens"] > 32)
        assert 0.0 <= row["exact"] <= 1.0 and 0.0 <= row["rouge1"] <= 1.0 and row["seconds"] > 0
        assert cell["exact"] == row["exact"] and cell["rouge1"] == round(row["rouge1"], 4)
        if row["over_rank_limit"]:  # past the rank limit nothing may be certified
            assert row["certified_share"] == 0.0 and cell["targets"].startswith("past the rank limit")
    cells = read_csv(out / "bench_batch.csv")
    assert [c["kind"] for c in cells] == list(bench_batch.KINDS) and {"exact_mean", "seconds_mean"} <= set(cells[0])
    assert len(read_csv(out / "bench_batch_batches.csv")) == 3
    md = (out / "bench_batch.md").read_text(encoding="utf-8")
    assert "| model | init | E | B | kind |" in md and md.count("| tiny |") == 3
    assert private(out / "raw" / "bench_batch.jsonl")

    def no_attack(*args, **kwargs):
        raise AssertionError("a kept batch was attacked again")

    with monkeypatch.context() as m:
        m.setattr(bench_batch, "attack_batch", no_attack)
        again = bench_batch.main(argv + ["--resume"])
    assert [r["exact"] for r in again] == [r["exact"] for r in rows] and all(r["resumed"] for r in again)


def test_bench_batch_attacks_fedavg_updates_of_e_steps(tmp_path: Path, capsys) -> None:
    """``--local-steps 2``: each batch is a FedAvg client's update of 2 steps of B = 1 (two short CoLA sentences,
    inside tiny's rank limit), derived as the curious server derives it; span peels the steps apart and the replay
    certifies both sentences."""
    import json

    from experiments import bench_batch

    glue = tmp_path / "glue" / "CoLA"
    glue.mkdir(parents=True)
    (glue / "dev.tsv").write_text("".join(f"src\t{i % 2}\t\t{t}\n" for i, t in enumerate(COLA_DEV)))
    rows = bench_batch.main(["--models", "tiny", "--init", "uniform:0.1", "--local-steps", "2", "--lr", "1.0",
                             "--batch-sizes", "1", "--kinds", "consecutive", "--batches", "2", "--data-dir",
                             str(tmp_path / "glue"), "--out", str(tmp_path / "out"), "--time-budget", "30"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["local_steps"] == 2 and last["lr"] == 1.0
    [cell] = last["cells"]
    assert (cell["E"], cell["B"], cell["n"]) == (2, 1, 2) and cell["targets"] == "no target (FedAvg, E = 2)"
    for row in rows:
        assert len(row["reference"]) == 2 and not row["over_rank_limit"]
        assert row["exact"] == 1.0 and row["certified_share"] == 1.0, row
    md = (tmp_path / "out" / "bench_batch.md").read_text(encoding="utf-8")
    assert "| tiny | uniform:0.1 | 2 | 1 | consecutive |" in md and "FedAvg update: E = 2" in md


def test_bench_batch_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """In-process: a subprocess costs ~20 s of imports, and the way from a UsageError to one line and exit 2 is
    tested once for every script (test_a_script_given_bad_input_says_so_in_one_line_with_exit_2)."""
    from experiments import bench_batch
    from fedsim.core.errors import UsageError

    for argv, said in [(["--kinds", "shuffled"], ("shuffled", "random, consecutive, template")),
                       (["--local-steps", "2", "--public-lengths"], ("--public-lengths", "--local-steps 1")),
                       (["--task", "mnli"], ("mnli", "cola, sst2"))]:
        with pytest.raises(UsageError) as bad:
            bench_batch.parse_args([*argv, "--out", str(tmp_path)])
        assert all(part in str(bad.value) for part in said) and "\n" not in str(bad.value)


def test_bench_batch_targets_follow_the_issue_per_batch_size_and_model() -> None:
    """Issue #11's targets: exact and ROUGE-1 up to B = 32, ROUGE-1 >= 0.95 at B = 64, and time limits of 60 s at
    B = 16, 10 minutes at B = 32 on bert-base, 15 minutes at B = 64 on bert-large."""
    from experiments.bench_batch import target_verdict

    def cell(model: str, batch: int, exact: float, rouge1: float, seconds: float) -> dict:
        return {"model": model, "E": 1, "B": batch, "n": 2, "over_rank_limit": 0, "certified_past_limit": 0,
                "exact_mean": exact, "rouge1_mean": rouge1, "seconds_mean": seconds}

    assert target_verdict(cell("tinybert4", 16, 1.0, 1.0, 59.0)) == "met"
    assert target_verdict(cell("tinybert4", 16, 1.0, 1.0, 61.0)) == "missed: > 60 s"
    assert target_verdict(cell("bert-base", 32, 1.0, 1.0, 601.0)) == "missed: > 600 s"
    assert target_verdict(cell("tinybert4", 32, 1.0, 1.0, 601.0)) == "met"  # the 10 minutes are bert-base's
    assert target_verdict(cell("bert-base", 32, 0.9, 0.98, 100.0)) == "missed: exact < 0.95, R-1 < 0.99"
    assert target_verdict(cell("bert-large", 64, 0.5, 0.96, 899.0)) == "met"  # no exact-rate target at 64
    assert target_verdict(cell("bert-large", 64, 0.5, 0.94, 901.0)) == "missed: R-1 < 0.95, > 900 s"
    assert target_verdict(cell("bert-large", 48, 0.0, 0.0, 1e4)) == "no target (B = 48)"
    assert target_verdict({**cell("minilm-l6", 2, 0.0, 0.0, 1.0), "E": 2}) == "no target (FedAvg, E = 2)"
