"""Render any results directory (`fedleak attack`, `simulate`, `sweep` or experiment output) as Markdown.

The directory's kind is what its summary.json states (``fedsim.results.read_run``); directories from before runs
stated their kind are recognised by their files, and the report says so.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from fedsim.core.errors import UsageError
from fedsim.frontier.verdict import read_verdict
from fedsim.results import FILES, RunInfo, read_records, read_run, read_table

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
    """Markdown for a results directory, by the kind its summary.json states."""
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"results directory {str(d)!r} does not exist")
    run = read_run(d)
    title, *body = RENDERERS[run.kind](d, run, examples)
    return "\n".join([title, *(["", f"Note: {run.note}"] if run.note else []), *body]) + "\n"


def _render_attack(d: Path, run: RunInfo, examples: int) -> list[str]:
    rows = read_records(d, "results.jsonl")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r.get("method"), r.get("model"), r.get("init"), r.get("dataset"), r.get("batch_size"))].append(r)
    headers = ["method", "model", "init", "dataset", "B", "batches", "recover rate", "ROUGE-1", "ROUGE-2", "ROUGE-L",
               "token acc.", "label correct", "s / batch"]
    table = [[*key, len(g), *(mean_std(r.get(m) for r in g) for m in
              ("recover_rate", "rouge1", "rouge2", "rougeL", "token_accuracy", "label_correct", "seconds"))]
             for key, g in groups.items()]
    out = [f"# Attack results: {d}", "", "Mean ± std over attacked batches.", "", markdown_table(headers, table)]
    return out + _examples(rows, examples)


def _examples(rows: list[dict], n: int) -> list[str]:
    if n <= 0 or not rows:
        return []
    ex = [(r.get("method", ""), " / ".join(_as_list(r.get("reference"))), " / ".join(_as_list(r.get("reconstruction"))),
           r.get("rouge1")) for r in rows[:n] if "reference" in r]
    return ["", f"First {len(ex)} examples (private text):", "", markdown_table(["method", "reference", "reconstruction", "ROUGE-1"], ex)]


def _as_list(v: Any) -> list[str]:
    return [str(x) for x in v] if isinstance(v, list) else ([] if v is None else [str(v)])


def _render_simulate(d: Path, run: RunInfo, examples: int) -> list[str]:
    rounds = read_records(d, "rounds.jsonl")
    leaks = read_records(d, "leakage.jsonl")
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
    if run.summary is not None:
        flat = [(k, v) for k, v in run.summary.items() if not isinstance(v, (dict, list))]
        out += ["", "Summary:", "", markdown_table(["field", "value"], flat)]
    return out + _examples([x for x in leaks if not x.get("error")], examples)


def _render_sweep(d: Path, run: RunInfo, examples: int) -> list[str]:
    out = [f"# Defense sweep: {d}"]
    summary = run.summary or {}
    if summary.get("kind") == "sweep":
        finished = summary.get("runs_finished", summary.get("rows"))  # "rows" counted runs before --seeds
        seeds = f" ({len(summary['seeds'])} seed(s) per setting)" if summary.get("seeds") else ""
        out += ["", f"Status {summary.get('status')}: {finished} of {summary.get('runs')} run(s){seeds} "
                    f"finished; {summary.get('reused', 0)} of them kept from an earlier run (--resume)."]
    if not (d / "tradeoff.csv").is_file():
        return out + ["", "No run has finished yet (no tradeoff.csv)."]
    rows = read_table(d, "tradeoff.csv")
    if not rows:
        raise UsageError(f"{d / 'tradeoff.csv'} is empty")
    if "accuracy_mean" not in rows[0]:  # a sweep from before --seeds: its columns as they are
        headers = list(rows[0].keys())
        return out + ["", markdown_table(headers, [[_num(r[h]) for h in headers] for r in rows])]
    headers = ["defense", "attack", "ε", "seeds", "accuracy (mean ± sd)", "cost, points [95% CI]",
               "updates (failed)", "ROUGE-1 [95% CI]", "ROUGE-2 [95% CI]", "ROUGE-1, failures as 0"]
    table = [[r["defense"], r["attack"], _num(r["epsilon"]), r["n_seeds"], _pm(r["accuracy_mean"], r["accuracy_sd"]),
              _ci(r["accuracy_cost_points"], r["accuracy_cost_lo"], r["accuracy_cost_hi"], ".1f"),
              f"{r['n_updates']} ({r['n_failed']})", _ci(r["rouge1_mean"], r["rouge1_lo"], r["rouge1_hi"]),
              _ci(r["rouge2_mean"], r["rouge2_lo"], r["rouge2_hi"]), _num(r["rouge1_failures_as_zero"])]
             for r in rows]
    out += ["", "Accuracy: final dev accuracy, mean ± sd over seeds; its cost against `none` in points with a 95% "
                "Welch interval. Leakage: mean over every attacked update of every seed, 95% t-interval. One row per "
                "run: runs.csv.", "", markdown_table(headers, table)]
    verdict = read_verdict(d)
    if verdict.get("text"):
        out += ["", *(f"    {line}" for line in verdict["text"])]
    return out


def _pm(mean: str, sd: str) -> str:
    if mean in ("", None):
        return ""
    return f"{float(mean):.3f}" + ("" if sd in ("", None) else f" ± {float(sd):.3f}")


def _ci(mean: str, lo: str, hi: str, spec: str = ".3f") -> str:
    if mean in ("", None):
        return ""
    return format(float(mean), spec) + ("" if lo in ("", None) else f" [{float(lo):{spec}}, {float(hi):{spec}}]")


def _render_experiment(d: Path, run: RunInfo, examples: int) -> list[str]:
    """Each script's rows (and how many were kept from an earlier run), then its own Markdown table."""
    scripts = (run.summary or {}).get("experiments") or {}
    table = [[name, facts.get("status"), facts.get("rows"), facts.get("reused"),
              ", ".join(f.name.format(name=name) for f in FILES["experiment"]
                        if "{cell}" not in f.name and (d / f.name.format(name=name)).is_file())]
             for name, facts in scripts.items()]
    out = [f"# Experiments: {d}", "", markdown_table(["script", "status", "rows", "reused (--resume)", "files"], table)]
    for name in scripts:
        md = d / f"{name}.md"
        if md.is_file():  # its own table and notes, one heading level down
            out += ["", *("#" + line if line.startswith("#") else line
                          for line in md.read_text(encoding="utf-8").rstrip("\n").splitlines())]
    return out


def _num(text: str) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


RENDERERS = {"attack": _render_attack, "simulate": _render_simulate, "sweep": _render_sweep,
             "experiment": _render_experiment}
