"""`fedleak report` renders each kind of results directory: the kind its summary.json states (files written through
``fedsim.results``), or, for directories from an older fedleak, the kind its files tell."""

from __future__ import annotations

import csv
import os

from fedsim.cli import main
from fedsim.core.io import append_jsonl, write_json
from fedsim.report import markdown_table, mean_std
from fedsim.results import RunDir


def test_markdown_table_and_mean_std():
    assert markdown_table(["a", "b"], [[1, 0.5], ["x|y", float("inf")]]) == "| a | b |\n| --- | --- |\n| 1 | 0.500 |\n| x\\|y | inf |"
    assert mean_std([1.0, 3.0]) == "2.000 ± 1.414"
    assert mean_std([None, "x"]) == ""


def attack_records(run: RunDir) -> None:
    for i, (m, r1) in enumerate([("tag", 0.9), ("tag", 0.7), ("dlg", 0.2)]):
        run.append("results.jsonl", {"method": m, "model": "tiny", "init": "normal:0.02", "dataset": "pii",
                   "batch_size": 1, "reference": [f"ref {i}"], "reconstruction": [f"rec {i}"], "recover_rate": r1,
                   "rouge1": r1, "rouge2": r1 / 2, "rougeL": r1, "token_accuracy": r1, "label_correct": 1.0, "seconds": 2.0})


def test_report_attack_dir(tmp_path, capsys):
    run = RunDir(tmp_path, "attack")
    attack_records(run)
    run.write_summary({"count": 3})
    assert oct(os.stat(tmp_path / "results.jsonl").st_mode & 0o777) == "0o600"
    out_file = tmp_path / "report.md"
    assert main(["report", str(tmp_path), "--out", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert "| tag | tiny | normal:0.02 | pii | 1 | 2 | 0.800 ± 0.141 |" in text
    assert "| dlg | tiny | normal:0.02 | pii | 1 | 1 | 0.200 |" in text
    assert "ref 0" in text and "rec 0" in text
    assert out_file.read_text() == text and oct(os.stat(out_file).st_mode & 0o777) == "0o600"
    assert "Note:" not in text  # the kind came from summary.json


def simulate_files(run: RunDir) -> None:
    for rnd in (1, 2):
        run.append("rounds.jsonl", {"round": rnd, "train_loss": 0.7, "eval_accuracy": 0.5 + rnd / 10,
                   "eval_loss": 0.6, "epsilon": None, "seconds": 3.0})
    run.append("leakage.jsonl", {"round": 1, "client": 0, "method": "tag", "reference": ["a b"],
               "reconstruction": ["a c"], "rouge1": 0.5, "rouge2": 0.0, "rougeL": 0.5, "recover_rate": 0.5, "seconds": 1})
    run.append("leakage.jsonl", {"round": 2, "client": 1, "method": "tag", "error": "RuntimeError: boom"})


def test_report_simulate_dir(tmp_path, capsys):
    run = RunDir(tmp_path, "simulate")
    simulate_files(run)
    run.write_summary({"final_accuracy": 0.7, "mean_rouge1": 0.5})
    assert main(["report", str(tmp_path), "--examples", "0"]) == 0
    text = capsys.readouterr().out
    assert "| 1 | 0.700 | 0.600 | 0.600 |  | 1 | 0.500 | 0.500 | 3.000 |" in text
    assert "| 2 | 0.700 | 0.700 | 0.600 |  | 0 |" in text
    assert "1 attack job(s) failed; first error: RuntimeError: boom" in text
    assert "| final_accuracy | 0.700 |" in text and "| kind | simulate |" in text


SWEEP_ROWS = [{"defense": "none", "epsilon": "inf", "final_accuracy": "0.8", "rouge1": "0.95"},
              {"defense": "dp:sigma=1,c=1", "epsilon": "3.2", "final_accuracy": "0.7", "rouge1": "0.1"}]


def test_report_sweep_dir(tmp_path, capsys):
    run = RunDir(tmp_path, "sweep")
    run.write_csv("tradeoff.csv", SWEEP_ROWS, ["defense", "epsilon", "final_accuracy", "rouge1"])
    run.write_summary({"status": "completed", "runs": 2, "rows": 2, "reused": 1})
    assert main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| none | inf | 0.800 | 0.950 |" in text and "| dp:sigma=1,c=1 | 3.200 | 0.700 | 0.100 |" in text
    assert "2 of 2 run(s) finished; 1 of them kept from an earlier run (--resume)" in text


def test_report_dispatches_on_the_stated_kind_not_on_file_names(tmp_path, capsys):
    """A stray file of another kind does not change what the directory is."""
    run = RunDir(tmp_path, "attack")
    attack_records(run)
    run.write_summary({"count": 3})
    (tmp_path / "tradeoff.csv").write_text("defense\nnone\n")  # looks like a sweep by its files
    (tmp_path / "rounds.jsonl").write_text("")
    assert main(["report", str(tmp_path), "--examples", "0"]) == 0
    assert capsys.readouterr().out.startswith(f"# Attack results: {tmp_path}\n")


def test_report_older_dirs_by_their_files_with_a_note(tmp_path, capsys):
    """Directories written before runs stated their kind (no ``kind`` in summary.json, or no summary.json)."""
    attack, simulate, sweep = tmp_path / "attack", tmp_path / "simulate", tmp_path / "sweep"
    for row in [{"method": "tag", "model": "tiny", "rouge1": 0.9, "reference": ["r"], "reconstruction": ["r"]}]:
        append_jsonl(attack / "results.jsonl", row)
    append_jsonl(simulate / "rounds.jsonl", {"round": 1, "train_loss": 0.7, "eval_accuracy": 0.6, "eval_loss": 0.6,
                                             "epsilon": None, "seconds": 3.0})
    write_json(simulate / "summary.json", {"final_accuracy": 0.6})  # no kind
    sweep.mkdir()
    with open(sweep / "tradeoff.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["defense", "epsilon", "final_accuracy", "rouge1"])
        w.writerow(["none", "inf", "0.8", "0.95"])
    for d, title, marker in ((attack, "# Attack results", "results.jsonl"), (simulate, "# Federation", "rounds.jsonl"),
                             (sweep, "# Defense sweep", "tradeoff.csv")):
        assert main(["report", str(d)]) == 0
        text = capsys.readouterr().out
        assert text.startswith(title) and f"because it holds {marker}" in text and "older fedleak" in text
    assert "| none | inf | 0.800 | 0.950 |" in text


def test_report_bad_dirs(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "holds no fedleak results" in err[1]
    assert "summary.json with a kind" in err[1]
    write_json(tmp_path / "summary.json", {"kind": "banana"})
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'banana'" in err[0]
