"""``fedsim.results``: each kind of run writes exactly its declared files, with the declared modes and its kind in
summary.json; ``fedleak report`` dispatches on that kind; one resume mechanism serves sweeps and experiments."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.recorder import Recorder
from fedsim.results import FILES, LEDGER, Resume, RunDir, declared, read_run, read_summary
from fedsim.settings import Settings

pytestmark = pytest.mark.usefixtures("one_thread")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_declared(root: Path, kind: str, name: str = "", skip_dirs: bool = False) -> list[str]:
    """Every file under ``root`` is a declared file of ``kind`` with the declared mode; returns their names."""
    names = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if skip_dirs and "/" in relative:  # a sweep's run sub-directories are simulate runs (checked there)
            continue
        file = declared(kind, relative)  # raises for an undeclared file
        if file.private:
            assert mode(path) == 0o600, relative
        else:
            assert mode(path) & 0o077 != 0 and mode(path) != 0o600, relative  # the umask's default, not private
        names.append(relative)
    summary = read_summary(root)
    assert summary is not None and summary["kind"] == kind and next(iter(summary)) == "kind"
    return names


def test_declarations_match_names_and_refuse_the_undeclared(tmp_path):
    assert declared("experiment", "fig5_tag_vs_dlg_examples.md").private
    assert not declared("experiment", "fig5_tag_vs_dlg.md").private
    assert declared("experiment", "raw/table4_init_cell12.txt").private
    with pytest.raises(ValueError, match="not a declared"):
        RunDir(tmp_path, "attack").write_text("notes.txt", "x")
    with pytest.raises(ValueError, match="not a declared"):
        declared("experiment", "raw/nested/x.jsonl")
    assert {f.name for f in FILES["simulate"]} == {"rounds.jsonl", "leakage.jsonl", "scores.jsonl", "summary.json", "simulate.png",
                                                  "report.html"}


def test_atomic_rewrite_keeps_the_declared_mode(tmp_path):
    run = RunDir(tmp_path, "sweep")
    (tmp_path / "tradeoff.csv").write_text("old")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "summary.json").chmod(0o644)  # an older file's mode does not survive
    run.write_csv("tradeoff.csv", [{"a": 1, "b": None}], ["a", "b"])
    run.write_summary({"kind": "ignored", "rows": 1})
    assert (tmp_path / "tradeoff.csv").read_bytes() == b"a,b\r\n1,\r\n"
    assert mode(tmp_path / "summary.json") == 0o600 and read_summary(tmp_path) == {"kind": "sweep", "rows": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "tradeoff.csv"]  # no temporary left


# --- one test per kind: the real writer, its files, and `fedleak report` on them -----------------------------------
def test_attack_writes_its_declared_files(tmp_path, capsys):
    out = tmp_path / "attack"
    assert main(["attack", "--model", "tiny", "--init", "uniform:0.1", "--quiet", "--dataset", "pii",
                 "--num-samples", "1", "--method", "dlg", "--iterations", "2", "--out", str(out)]) == 0
    assert check_declared(out, "attack") == ["results.jsonl", "summary.json"]
    capsys.readouterr()
    assert main(["report", str(out), "--examples", "0"]) == 0
    assert capsys.readouterr().out.startswith(f"# Attack results: {out}\n\nMean")


def simulate_run(settings: Settings, status: str = "completed") -> dict:
    """A simulate run's files through its Recorder, without a federation."""
    recorder = Recorder(settings, echo=lambda _: None)
    recorder.round(0, train_loss=None, eval_accuracy=0.5, eval_loss=0.7, seconds=0.0)
    recorder.leakage([{"round": 1, "client": 0, "method": "tag", "reference": ["my pin is 4711"],
                       "reconstruction": ["my pin is"], "rouge1": 0.8, "rouge2": 0.6, "rougeL": 0.8,
                       "recover_rate": 0.75, "token_accuracy": 0.7, "label_correct": 1.0, "seconds": 1.0}])
    recorder.round(1, train_loss=0.69, eval_accuracy=0.55, eval_loss=0.68, seconds=1.0, attacks_submitted=1)
    return recorder.finish(status)


def test_simulate_writes_its_declared_files(tmp_path, capsys):
    out = tmp_path / "sim"
    summary = simulate_run(Settings(model="tiny", init="normal:0.02", dataset="pii", rounds=1, attack="tag", out=str(out)))
    assert summary["kind"] == "simulate" and summary["rouge1"] == pytest.approx(0.8)
    assert check_declared(out, "simulate") == ["leakage.jsonl", "rounds.jsonl", "scores.jsonl", "simulate.png",
                                                 "summary.json"]
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# Federation: {out}\n") and "my pin is 4711" in text


def test_sweep_writes_its_declared_files(tmp_path, capsys):
    from fedsim.sweep import sweep

    base = Settings(model="tiny", init="normal:0.02", dataset="pii", rounds=1, attack="none")
    rows = sweep(base, ["none", "noise:sigma=0.1"], ["none"], tmp_path / "sweep", run=simulate_run,
                 echo=lambda _: None)
    assert len(rows) == 2
    assert check_declared(tmp_path / "sweep", "sweep", skip_dirs=True) == ["frontier.png", "runs.csv", "summary.json",
                                                                            "tradeoff.csv", "verdict.json"]
    for row in rows:
        check_declared(Path(row["run_dir"]), "simulate")
    summary = read_summary(tmp_path / "sweep")
    assert summary["status"] == "completed" and summary["runs_finished"] == summary["runs"] == 2
    assert summary["reused"] == 0 and summary["seeds"] == [0]
    assert summary["defenses"] == ["none", "noise:sigma=0.1"] and summary["settings"]["rounds"] == 1
    assert main(["report", str(tmp_path / "sweep")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Defense sweep") and "0 of them kept from an earlier run" in text


def test_sweep_records_a_failed_run(tmp_path):
    from fedsim.sweep import sweep

    def broken(settings):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        sweep(Settings(model="tiny", init="normal:0.02", dataset="pii", attack="none"), ["none"], ["none"], tmp_path, run=broken,
              echo=lambda _: None)
    assert read_summary(tmp_path)["status"] == "failed" and read_run(tmp_path).kind == "sweep"


def experiment(out: Path, resume: bool = False) -> list[dict]:
    """One cell of one sentence through the experiments' runner, and its table."""
    from experiments import common

    args = common.setup(common.parser("t\n", common.Scale(1, 2), common.Scale(1, 2)).parse_args(
        ["--quick", "--out", str(out), "--threads", "1"] + (["--resume"] if resume else [])))
    cell = common.Cell({"init": "uniform:0.1"}, common.pii_sentences(1, 0),
                       common.AttackJob(model="tiny", init="uniform:0.1", method="dlg", iterations=2))
    rows = common.run_cells([cell], "demo", out, resume=resume)
    common.write_table(out, "demo", common.aggregate(rows, ["init"]), ["init"], "Demo", [common.describe_run(args)])
    return rows


def test_experiment_writes_its_declared_files(tmp_path, capsys):
    experiment(tmp_path)
    assert check_declared(tmp_path, "experiment") == ["demo.csv", "demo.md", "raw/demo.jsonl", "raw/demo_cell1.txt",
                                                      "summary.json"]
    facts = read_summary(tmp_path)["experiments"]["demo"]
    assert facts["rows"] == 1 and facts["reused"] == 0 and facts["status"] == "attacked"
    assert "Reused from an earlier run (--resume): 0 of 1 attacked sentence(s)." in (tmp_path / "demo.md").read_text()
    assert main(["report", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"# Experiments: {tmp_path}\n") and "| demo | attacked | 1 | 0 |" in text
    assert "## Demo" in text  # the script's own table, a level down


# --- one resume mechanism -----------------------------------------------------------------------------------------
def test_resume_matches_on_the_named_fields_and_counts_what_it_kept(tmp_path):
    LEDGER.reset()
    run = RunDir(tmp_path, "experiment")
    for sha in ("a", "b"):
        run.append("raw/x.jsonl", {"method": "tag", "text_sha": sha, "rouge1": 0.5, "seconds": 9})
    lines: list[str] = []
    resume = Resume.rows(run.path("raw/x.jsonl"), "attacked sentence")
    resume.echo = lines.append
    kept = resume.keep([{"method": "tag", "text_sha": "b", "seconds": 1}, {"method": "dlg", "text_sha": "a"}],
                       ["method", "text_sha"], label="[x] cell 1/1")
    assert list(kept) == [0] and kept[0]["rouge1"] == 0.5 and (resume.kept, resume.asked) == (1, 2)
    assert lines == ["[x] cell 1/1: 1 attacked sentence(s) kept from the earlier run"]
    assert Resume.rows(run.path("raw/x.jsonl"), "attacked sentence", enabled=False).keep(
        [{"method": "tag", "text_sha": "b"}], ["method", "text_sha"]) == {}

    done, other = tmp_path / "done", tmp_path / "interrupted"
    settings = Settings(model="tiny", init="normal:0.02", dataset="pii", rounds=1, attack="none", out=str(done))
    simulate_run(settings)
    simulate_run(Settings(model="tiny", init="normal:0.02", dataset="pii", rounds=1, attack="none", out=str(other)), status="interrupted")
    runs = Resume.runs([done, other, tmp_path / "missing"], "federation run")
    names = [k for k in settings.to_run_config() if k != "out"]
    assert runs.take({**settings.to_run_config(), "out": "elsewhere"}, names)["status"] == "completed"
    assert runs.take(Settings(model="tiny", init="normal:0.02", dataset="pii", rounds=2, attack="none").to_run_config(), names) is None
    assert LEDGER.note() == ("Reused from an earlier run (--resume): 1 of 3 attacked sentence(s), "
                             "1 of 2 federation run(s).")


def test_sweep_and_experiments_resume_through_it_and_say_how_much_they_kept(tmp_path, monkeypatch):
    from experiments import common
    from fedsim.sweep import sweep

    calls: list[str] = []

    def counted(settings):
        calls.append(settings.out)
        return simulate_run(settings)

    base = Settings(model="tiny", init="normal:0.02", dataset="pii", rounds=1, attack="none")
    sweep(base, ["none", "noise:sigma=0.1"], ["none"], tmp_path / "sweep", run=counted, echo=lambda _: None)
    lines: list[str] = []
    sweep(base, ["none", "noise:sigma=0.1", "noise:sigma=1"], ["none"], tmp_path / "sweep", run=counted,
          echo=lines.append, resume=True)
    assert len(calls) == 3 and sum("(kept from the earlier run)" in line for line in lines) == 2
    summary = read_summary(tmp_path / "sweep")
    assert (summary["runs_finished"], summary["reused"]) == (3, 2)

    first = experiment(tmp_path / "exp")
    with monkeypatch.context() as m:
        m.setattr(common, "iter_attacks", lambda *a, **k: pytest.fail("a kept sentence was attacked again"))
        again = experiment(tmp_path / "exp", resume=True)
    assert again[0]["resumed"] and again[0]["rouge1"] == first[0]["rouge1"]
    assert read_summary(tmp_path / "exp")["experiments"]["demo"]["reused"] == 1
    md = (tmp_path / "exp" / "demo.md").read_text()
    assert "Reused from an earlier run (--resume): 1 of 1 attacked sentence(s)." in md


def test_experiment_summary_keeps_every_script(tmp_path):
    from fedsim.results import record_experiment

    record_experiment(tmp_path, "a", {"rows": 1})
    record_experiment(tmp_path, "b", {"rows": 2})
    record_experiment(tmp_path, "a", {"rows": 3})
    scripts = json.loads((tmp_path / "summary.json").read_text())["experiments"]
    assert {k: v["rows"] for k, v in scripts.items()} == {"a": 3, "b": 2}
