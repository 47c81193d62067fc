"""Render any results directory (`fedleak attack`, `simulate` or `sweep` output) as Markdown."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from fedsim.core.errors import UsageError
from fedsim.core.io import read_jsonl

LEAKAGE_METRICS = ("rouge1", "rouge2", "rougeL", "recover_rate")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats to 3 decimals."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "inf" if math.isinf(v) else ("" if math.isnan(v) else f"{v:.3f}")
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(values: Iterable[Any]) -> str:
    """``mean ± std`` over the finite numbers given (std over examples, n-1)."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not xs:
        return ""
    return f"{statistics.fmean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"


def render(directory: str | Path, examples: int = 3) -> str:
    """Markdown for a results directory; the kind is recognised by the files it holds."""
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"results directory {str(d)!r} does not exist")
    if (d / "tradeoff.csv").is_file():
        return _render_sweep(d)
    if (d / "rounds.jsonl").is_file():
        return _render_simulate(d, examples)
    if (d / "results.jsonl").is_file():
        return _render_attack(d, examples)
    raise UsageError(f"{str(d)!r} holds no fedleak results: expected results.jsonl (attack), rounds.jsonl (simulate) or tradeoff.csv (sweep)")


def _render_attack(d: Path, examples: int) -> str:
    rows = read_jsonl(d / "results.jsonl")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r.get("method"), r.get("model"), r.get("init"), r.get("dataset"), r.get("batch_size"))].append(r)
    headers = ["method", "model", "init", "dataset", "B", "batches", "recover rate", "ROUGE-1", "ROUGE-2", "ROUGE-L",
               "token acc.", "label correct", "s / batch"]
    table = [[*key, len(g), *(mean_std(r.get(m) for r in g) for m in
              ("recover_rate", "rouge1", "rouge2", "rougeL", "token_accuracy", "label_correct", "seconds"))]
             for key, g in groups.items()]
    out = [f"# Attack results: {d}", "", "Mean ± std over attacked batches.", "", markdown_table(headers, table)]
    return "\n".join(out + _examples(rows, examples)) + "\n"


def _examples(rows: list[dict], n: int) -> list[str]:
    if n <= 0 or not rows:
        return []
    ex = [(r.get("method", ""), " / ".join(_as_list(r.get("reference"))), " / ".join(_as_list(r.get("reconstruction"))),
           r.get("rouge1")) for r in rows[:n] if "reference" in r]
    return ["", f"First {len(ex)} examples (private text):", "", markdown_table(["method", "reference", "reconstruction", "ROUGE-1"], ex)]


def _as_list(v: Any) -> list[str]:
    return [str(x) for x in v] if isinstance(v, list) else ([] if v is None else [str(v)])


def _render_simulate(d: Path, examples: int) -> str:
    rounds = read_jsonl(d / "rounds.jsonl")
    leaks = read_jsonl(d / "leakage.jsonl") if (d / "leakage.jsonl").is_file() else []
    by_round: dict[int, list[dict]] = defaultdict(list)
    for r in leaks:
        by_round[r.get("round")].append(r)
    headers = ["round", "train loss", "eval acc.", "eval loss", "ε", "attacked", "ROUGE-1", "recover rate", "s"]
    table = []
    for r in rounds:
        ok = [x for x in by_round.get(r.get("round"), []) if not x.get("error")]
        table.append([r.get("round"), r.get("train_loss"), r.get("eval_accuracy"), r.get("eval_loss"), r.get("epsilon"),
                      len(ok), mean_std(x.get("rouge1") for x in ok), mean_std(x.get("recover_rate") for x in ok),
                      r.get("seconds")])
    out = [f"# Federation: {d}", "", markdown_table(headers, table)]
    errors = [x for x in leaks if x.get("error")]
    if errors:
        out += ["", f"{len(errors)} attack job(s) failed; first error: {errors[0]['error']}"]
    if (d / "summary.json").is_file():
        summary = json.loads((d / "summary.json").read_text())
        flat = [(k, v) for k, v in summary.items() if not isinstance(v, (dict, list))]
        out += ["", "Summary:", "", markdown_table(["field", "value"], flat)]
    return "\n".join(out + _examples([x for x in leaks if not x.get("error")], examples)) + "\n"


def _render_sweep(d: Path) -> str:
    with open(d / "tradeoff.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise UsageError(f"{d / 'tradeoff.csv'} is empty")
    headers = list(rows[0].keys())
    table = [[_num(r[h]) for h in headers] for r in rows]
    return "\n".join([f"# Defense sweep: {d}", "", markdown_table(headers, table)]) + "\n"


def _num(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text
