"""``experiments/reference_frontier.py`` (issue #12, item 4): the committed run's pipeline, on the tiny model."""

from __future__ import annotations

import json

from test_federation import _one_thread, _task_identity  # noqa: F401  (autouse fixtures)

from experiments import reference_frontier

def test_quick_reference_frontier_writes_the_table_verdict_and_command(tmp_path, capsys):
    out = tmp_path / "results" / "reference_frontier"
    result = reference_frontier.main(["--quick", "--seeds", "1", "--jobs", "1", "--out", str(out)])
    assert result["runs"] == 2 and result["reused"] == 0
    assert [r["defense"] for r in result["rows"]] == ["none", "noise:sigma=0.1"]
    assert all(r["n_updates"] + r["n_failed"] >= 1 for r in result["rows"])  # every setting was attacked
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result  # one JSON line last
    for name in ("tradeoff.csv", "runs.csv", "verdict.json", "frontier.png", "summary.json"):
        assert (out / name).is_file(), name
    table = (out.parent / "reference_frontier.md").read_text()
    verdict = json.loads((out / "verdict.json").read_text())
    assert "--quick --seeds 1 --jobs 1" in table and verdict["text"][0] in table and "0 kept" in table
    for run in (p for p in out.iterdir() if p.is_dir()):  # the committed figures hold no text
        leaks = [json.loads(line) for line in (run / "leakage.jsonl").read_text().splitlines()]
        scores = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
        assert [s.get("rouge1") for s in scores] == [r.get("rouge1") for r in leaks] and scores
        assert not any("reference" in s or "reconstruction" in s for s in scores)
        code = json.loads((run / "summary.json").read_text())["code"]  # which source made it (runs span commits)
        assert code and (code.startswith("fedleak ") or len(code.split("+")[0]) >= 7)
    again = reference_frontier.main(["--quick", "--seeds", "1", "--jobs", "1", "--out", str(out), "--resume"])
    assert again["reused"] == 2 and [r["rouge1_mean"] for r in again["rows"]] == [
        r["rouge1_mean"] for r in result["rows"]]
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    table = reference_frontier.main(["--quick", "--seeds", "2", "--out", str(out), "--table-only"])
    assert table["runs"] == 4 and table["reused"] == 2 and sorted(p.name for p in out.iterdir() if p.is_dir()) == dirs
    assert [r["n_seeds"] for r in table["rows"]] == [1, 1]  # seed 1 was never run: left out, not invented
    assert [r["rouge1_mean"] for r in table["rows"]] == [r["rouge1_mean"] for r in result["rows"]]
    assert "2 not run yet" in (out.parent / "reference_frontier.md").read_text()
    assert (out / "frontier.png").is_file() and (out / "verdict.json").is_file()


def test_a_missing_glue_copy_is_one_line_and_exit_2(tmp_path):
    """In-process (common.run_script turns a UsageError into that one line and exit 2, tested once for every
    script in tests/test_experiments.py): a subprocess here cost ~20 s of imports."""
    import pytest

    from fedsim.core.errors import UsageError

    args = reference_frontier.parse_args(["--data-dir", str(tmp_path / "no-glue"), "--out", str(tmp_path / "out")])
    with pytest.raises(UsageError) as bad:
        reference_frontier.base_settings(args)
    assert "no-glue" in str(bad.value) and "\n" not in str(bad.value)
