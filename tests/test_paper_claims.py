"""The paper's claims against ours: the verdict rule and the numbers file parser (experiments/paper.py)."""

from __future__ import annotations

from experiments.paper import Stat, paper_tables, read_stats, verdict


def test_verdicts():
    assert verdict(Stat(10, 0.8, 0.05), Stat(10, 0.3, 0.05))[0] == "confirms"
    assert verdict(Stat(10, 0.3, 0.05), Stat(10, 0.8, 0.05))[0] == "refutes"
    assert verdict(Stat(3, 0.6, 0.3), Stat(3, 0.5, 0.3))[0] == "cannot tell"  # inside the interval
    outcome, why = verdict(Stat(8, 1.0, 0.0), Stat(8, 1.0, 0.0))
    assert outcome == "cannot tell" and "ceiling" in why
    assert verdict(Stat(10, 0.5, 0.01), Stat(10, 0.4, 0.01), k=1.5)[0] == "refutes"  # 0.5 < 1.5 x 0.4
    assert verdict(Stat(10, 0.5, 0.01), Stat(10, 0.4, 0.01), k=1.0)[0] == "confirms"
    assert verdict(None, Stat(3, 0.5, 0.1)) == ("cannot tell", "not run")


def test_reads_the_numbers_file_and_our_csv(tmp_path):
    numbers = tmp_path / "numbers.md"
    numbers.write_text("# x\n\n## Table II — model size\n| model | ROUGE-1 |\n| --- | --- |\n| TinyBERT4 | 27.07 |\n"
                       "Claim: larger.\n\n## Table VI — length\n| dataset | ROUGE-1 |\n| --- | --- |\n| RTE | 13.40 |\n")
    tables = paper_tables(numbers)
    assert tables["Table II"] == [{"model": "TinyBERT4", "ROUGE-1": "27.07"}]
    assert tables["Table VI"][0]["dataset"] == "RTE"
    table = tmp_path / "t.csv"
    table.write_text("model,n,rouge1_mean,rouge1_std\ntiny,4,0.5,0.1\nbig,2,0.9,\n")
    assert read_stats(table, {"model": "tiny"}, "rouge1") == Stat(4, 0.5, 0.1)
    assert read_stats(table, {"model": "big"}, "rouge1") == Stat(2, 0.9, 0.0)
    assert read_stats(table, {"model": "none"}, "rouge1") is None


def test_claims_script_writes_its_table(tmp_path):
    from experiments import claims

    (tmp_path / "fig5_tag_vs_dlg.csv").write_text(
        "method,n,recover_rate_mean,recover_rate_std,rouge2_mean,rouge2_std\n"
        "tag,10,0.9,0.05,0.9,0.05\ndlg,10,0.2,0.05,0.0,0.0\n")
    rows = {r["claim"]: r for r in claims.main(["--results", str(tmp_path), "--no-readme"])}
    assert rows["TAG recovers at least 1.5x DLG's Recover Rate"]["verdict"] == "confirms"
    assert rows["Larger models leak more"]["why"] == "not run"
    assert "**confirms**" in (tmp_path / "claims.md").read_text()
