"""`fedleak attack` end to end, in-process, on the tiny model and the built-in pii data."""

import json
import os
import stat

import pytest

from fedsim.cli import main

FIELDS = ("method", "model", "init", "dataset", "batch_size", "reference", "reconstruction", "recover_rate",
          "rouge1", "rouge2", "rougeL", "token_accuracy", "label_correct", "seconds", "iterations")
TINY = ["--model", "tiny", "--init", "uniform:0.1", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


def read(out):
    with open(out / "results.jsonl") as fh:
        records = [json.loads(line) for line in fh]
    with open(out / "summary.json") as fh:
        return records, json.load(fh)


def test_attack_one_sample_writes_both_files(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["attack", *TINY, "--dataset", "pii", "--num-samples", "1", "--batch-size", "1", "--method", "tag",
                 "--iterations", "150", "--seed", "0", "--out", str(out)])
    assert code == 0
    records, summary = read(out)
    assert len(records) == 1
    record = records[0]
    assert set(FIELDS) <= set(record)
    assert record["method"] == "tag" and record["model"] == "tiny" and record["dataset"] == "pii"
    assert record["iterations"] == 150 and record["batch_size"] == 1
    assert isinstance(record["reference"], list) and len(record["reference"]) == 1 and record["reference"][0]
    assert isinstance(record["reconstruction"], list) and len(record["reconstruction"]) == 1
    for key in ("recover_rate", "rouge1", "rouge2", "rougeL", "token_accuracy", "label_correct"):
        assert 0.0 <= record[key] <= 1.0
        assert summary[key] == pytest.approx(record[key])
    assert record["recover_rate"] > 0.3  # the attack does read something on tiny within 150 steps
    assert summary["count"] == 1 and summary["seconds"] == pytest.approx(record["seconds"]) and record["seconds"] > 0
    for name in ("results.jsonl", "summary.json"):  # they hold the client's text
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
    printed = capsys.readouterr().out
    assert "R-1" in printed and "mean" in printed


def test_text_file_batch_and_same_seed_same_result(tmp_path):
    text = tmp_path / "private.txt"
    text.write_text("my pin is 4711.\n\nthe meeting moved to friday.\nnot attacked: beyond num-samples\n")
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["attack", *TINY, "--text-file", str(text), "--num-samples", "2", "--batch-size", "2",
                     "--method", "dlg", "--iterations", "5", "--seed", "7", "--out", str(out)]) == 0
        runs.append(read(out))
    (records, summary), (again, _) = runs
    assert len(records) == 1 and records[0]["batch_size"] == 2
    assert records[0]["reference"] == ["my pin is 4711.", "the meeting moved to friday."]
    assert records[0]["reconstruction"] == again[0]["reconstruction"]
    assert records[0]["labels"] == again[0]["labels"]
    assert summary["samples"] == 2 and summary["count"] == 1


@pytest.mark.parametrize("argv", [
    ["--method", "nope"],
    ["--dataset", "imdb"],
    ["--text-file", "/nonexistent/file.txt"],
    ["--num-samples", "0"],
    ["--init", "normal:-1"],
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv):
    try:
        code = main(["attack", *TINY, "--iterations", "2", "--num-samples", "1", "--out", str(tmp_path / "x"), *argv])
    except SystemExit as exc:  # argparse rejects malformed values itself
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1 and "error" in err


def test_defense_reaches_the_client_or_fails_cleanly(tmp_path, capsys):
    argv = ["attack", *TINY, "--iterations", "2", "--num-samples", "1", "--method", "dlg"]
    try:
        from defenses import build_gradient_fn  # noqa: F401
    except ImportError:
        code = main([*argv, "--defense", "noise:sigma=0.1", "--out", str(tmp_path / "x")])
        assert code == 2 and "defenses not available" in capsys.readouterr().err
        return
    assert main([*argv, "--defense", "bogus:1", "--out", str(tmp_path / "bad")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    out = tmp_path / "noised"
    assert main([*argv, "--defense", "noise:sigma=0.1", "--out", str(out)]) == 0
    records, summary = read(out)
    assert records[0]["defenses"] == ["noise:sigma=0.1"] == summary["defenses"]
    # The attack saw a different (noised) gradient: same seed and text, different final distance.
    clean = tmp_path / "clean"
    assert main([*argv, "--out", str(clean)]) == 0
    assert read(clean)[0][0]["gradient_distance"] != records[0]["gradient_distance"]
