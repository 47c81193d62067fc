"""`fedleak report` renders each kind of results directory."""

from __future__ import annotations

import csv
import os

from fedsim.cli import main
from fedsim.core.io import append_jsonl, write_json
from fedsim.report import markdown_table, mean_std


def test_markdown_table_and_mean_std():
    assert markdown_table(["a", "b"], [[1, 0.5], ["x|y", float("inf")]]) == "| a | b |\n| --- | --- |\n| 1 | 0.500 |\n| x\\|y | inf |"
    assert mean_std([1.0, 3.0]) == "2.000 ± 1.414"
    assert mean_std([None, "x"]) == ""


def test_report_attack_dir(tmp_path, capsys):
    for i, (m, r1) in enumerate([("tag", 0.9), ("tag", 0.7), ("dlg", 0.2)]):
        append_jsonl(tmp_path / "results.jsonl", {"method": m, "model": "tiny", "init": "normal:0.02", "dataset": "pii",
                     "batch_size": 1, "reference": [f"ref {i}"], "reconstruction": [f"rec {i}"], "recover_rate": r1,
                     "rouge1": r1, "rouge2": r1 / 2, "rougeL": r1, "token_accuracy": r1, "label_correct": 1.0, "seconds": 2.0})
    assert oct(os.stat(tmp_path / "results.jsonl").st_mode & 0o777) == "0o600"
    out_file = tmp_path / "report.md"
    assert main(["report", str(tmp_path), "--out", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert "| tag | tiny | normal:0.02 | pii | 1 | 2 | 0.800 ± 0.141 |" in text
    assert "| dlg | tiny | normal:0.02 | pii | 1 | 1 | 0.200 |" in text
    assert "ref 0" in text and "rec 0" in text
    assert out_file.read_text() == text and oct(os.stat(out_file).st_mode & 0o777) == "0o600"


def test_report_simulate_dir(tmp_path, capsys):
    for rnd in (1, 2):
        append_jsonl(tmp_path / "rounds.jsonl", {"round": rnd, "train_loss": 0.7, "eval_accuracy": 0.5 + rnd / 10,
                     "eval_loss": 0.6, "epsilon": None, "seconds": 3.0})
    append_jsonl(tmp_path / "leakage.jsonl", {"round": 1, "client": 0, "method": "tag", "reference": ["a b"],
                 "reconstruction": ["a c"], "rouge1": 0.5, "rouge2": 0.0, "rougeL": 0.5, "recover_rate": 0.5, "seconds": 1})
    append_jsonl(tmp_path / "leakage.jsonl", {"round": 2, "client": 1, "method": "tag", "error": "RuntimeError: boom"})
    write_json(tmp_path / "summary.json", {"final_accuracy": 0.7, "mean_rouge1": 0.5})
    assert main(["report", str(tmp_path), "--examples", "0"]) == 0
    text = capsys.readouterr().out
    assert "| 1 | 0.700 | 0.600 | 0.600 |  | 1 | 0.500 | 0.500 | 3.000 |" in text
    assert "| 2 | 0.700 | 0.700 | 0.600 |  | 0 |" in text
    assert "1 attack job(s) failed; first error: RuntimeError: boom" in text
    assert "| final_accuracy | 0.700 |" in text


def test_report_sweep_dir(tmp_path, capsys):
    with open(tmp_path / "tradeoff.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["defense", "epsilon", "final_accuracy", "rouge1"])
        w.writerow(["none", "inf", "0.8", "0.95"])
        w.writerow(["dp:sigma=1,c=1", "3.2", "0.7", "0.1"])
    assert main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| none | inf | 0.800 | 0.950 |" in text and "| dp:sigma=1,c=1 | 3.200 | 0.700 | 0.100 |" in text


def test_report_bad_dirs(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "holds no fedleak results" in err[1]
