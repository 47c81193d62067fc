"""[claims] Which of the TAG paper's claims our runs confirm, refute or cannot tell, and why.

Reads the tables the other scripts wrote (``OUT/NAME.csv``) and the paper's numbers
(``../shared/paper/tag-paper-numbers.md``); writes ``OUT/claims.md`` and the claims table of
``experiments/README.md`` (between its ``claims`` markers). Verdict rule: ``experiments/paper.py``.

    python experiments/claims.py
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.paper import Stat, read_stats, verdict  # noqa: E402
from fedsim.results import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
README = ROOT / "experiments" / "README.md"
START, END = "<!-- claims:start (python experiments/claims.py) -->", "<!-- claims:end -->"


@dataclass(frozen=True)
class Claim:
    text: str
    paper: str  # what the paper reports for it
    table: str  # our result file (without .csv)
    metric: str
    more: dict[str, str]  # the setting that should leak more
    less: dict[str, str]
    factor: float = 1.0  # "more" should exceed factor x "less"


CLAIMS = (
    Claim("Larger models leak more", "Table II: BERT-base 41.95 vs TinyBERT4 27.07 ROUGE-1", "table2_model_size",
          "rouge1", {"model": "bert-base"}, {"model": "tinybert4"}),
    Claim("Larger models leak more (harder: 40 iterations)", "Table II: BERT-base 41.95 vs TinyBERT4 27.07 ROUGE-1",
          "harder/table2_model_size", "rouge1", {"model": "bert-base"}, {"model": "tinybert4"}),
    Claim("A smaller vocabulary leaks more", "Table VII: 21,128 tokens 54.87 vs 30,522 tokens 30.84 ROUGE-1",
          "table7_vocab", "rouge1", {"vocab": "bert-base-chinese-vocab"}, {"vocab": "bert-base-uncased"}),
    Claim("A smaller vocabulary leaks more (harder: 40 iterations)",
          "Table VII: 21,128 tokens 54.87 vs 30,522 tokens 30.84 ROUGE-1", "harder/table7_vocab", "rouge1",
          {"vocab": "bert-base-chinese-vocab"}, {"vocab": "bert-base-uncased"}),
    Claim("Shorter inputs leak more", "Table VI: CoLA < 10 words 30.84 vs RTE > 50 words 13.40 ROUGE-1",
          "table6_length", "rouge1", {"input": "CoLA < 10 words"}, {"input": "RTE > 50 words"}),
    Claim("Pretrained weights leak more (CoLA)", "Table V: 45.68 vs 30.84 ROUGE-1", "table5_pretrained", "rouge1",
          {"dataset": "cola", "weights": "pretrained"}, {"dataset": "cola", "weights": "initialized"}),
    Claim("Pretrained weights leak more (SST-2)", "Table V: 36.40 vs 30.74 ROUGE-1", "table5_pretrained", "rouge1",
          {"dataset": "sst2", "weights": "pretrained"}, {"dataset": "sst2", "weights": "initialized"}),
    Claim("Normal init: a smaller std leaks more", "Table IV: std 0.01 54.54 vs std 0.03 35.71 ROUGE-1",
          "table4_init", "rouge1", {"init": "normal:0.01"}, {"init": "normal:0.03"}),
    Claim("Uniform init: a larger range leaks more", "Table IV: 0.03 60.98 vs 0.01 39.39 ROUGE-1", "table4_init",
          "rouge1", {"init": "uniform:0.03"}, {"init": "uniform:0.01"}),
    Claim("TAG recovers at least 1.5x DLG's Recover Rate", "Fig. 5 / abstract: about 1.5x", "fig5_tag_vs_dlg",
          "recover_rate", {"method": "tag"}, {"method": "dlg"}, 1.5),
    Claim("TAG reaches at least 2.5x DLG's ROUGE-2", "Fig. 5 / abstract: about 2.7x (2.5x)", "fig5_tag_vs_dlg",
          "rouge2", {"method": "tag"}, {"method": "dlg"}, 2.5),
)


def _side(key: dict[str, str], stat: Stat | None) -> str:
    label = ", ".join(key.values())
    return f"{label}: not run" if stat is None else f"{label}: {stat.mean:.3f} ± {stat.std:.3f} (n = {stat.n})"


def evaluate(results: Path = RESULTS) -> list[dict[str, str]]:
    rows = []
    for c in CLAIMS:
        more = read_stats(results / f"{c.table}.csv", c.more, c.metric)
        less = read_stats(results / f"{c.table}.csv", c.less, c.metric)
        outcome, why = verdict(more, less, c.factor)
        rows.append({"claim": c.text, "paper": c.paper, "ours": f"{_side(c.more, more)} vs {_side(c.less, less)} "
                     f"({c.metric}, `{c.table}`)", "verdict": outcome, "why": why})
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| claim | paper | ours (mean ± std, n) | verdict | why |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['claim']} | {r['paper']} | {r['ours']} | **{r['verdict']}** | {r['why']} |" for r in rows]
    return "\n".join(lines)


def update_readme(table: str, readme: Path = README) -> bool:
    """Replace the table between the markers; False when the README has no markers."""
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    readme.write_text(head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1], encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> list[dict[str, str]]:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--results", default=str(RESULTS), help="directory of the table CSVs (default: experiments/results)")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite experiments/README.md's claims table")
    args = p.parse_args(argv)
    rows = evaluate(Path(args.results))
    table = markdown(rows)
    RunDir(args.results, "experiment").write_text("claims.md",
        "# The TAG paper's claims against our runs\n\n" + table + "\n\nVerdict rule: `experiments/paper.py` (Welch 95% "
        "interval of the difference of our two means; both at the 1.00 ceiling = the setting cannot test the claim)."
        "\n")
    if not args.no_readme:
        update_readme(table)
    print(table)
    return rows


if __name__ == "__main__":
    main()
