"""Shared plumbing of the reproduction scripts: options, sentence selection, attack grids, aggregation, output files.

Every script is ``python experiments/NAME.py [--quick] [--out DIR]`` (or ``python -m experiments.NAME``). A full run
reads real GLUE sentences from ``../shared/glue`` (``--data-dir``); ``--quick`` uses the built-in ``pii`` sentences
and the ``tiny`` model so that it runs anywhere in seconds (the tests run it). Each script writes
``OUT/NAME.csv`` and ``OUT/NAME.md`` (and a PNG where a figure fits); ``OUT/raw/NAME.jsonl`` keeps every attacked
sentence with its reconstruction (mode 0600, git-ignored), from which the tables can be checked; ``OUT/summary.json``
(kind ``experiment``) says per script how many rows it has and how many were kept from an earlier run. Every file is
written through ``fedsim.results`` (``FILES["experiment"]``).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# Before torch loads OpenMP: on a shared 2-core machine, spinning OpenMP threads wait for each other at every small
# parallel region of the attack (see experiments/bench_attack.py); PASSIVE lets a waiting thread yield.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fedsim.core.data import generate_pii, load_task  # noqa: E402
from fedsim.core.errors import UsageError  # noqa: E402
from fedsim.core.logs import quiet_libraries  # noqa: E402
from fedsim.harness import AttackJob, iter_attacks, prepare  # noqa: E402
from fedsim.report import markdown_table  # noqa: E402
from fedsim.results import LEDGER, Resume, RunDir, record_experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
SHARED = ROOT.parent / "shared"
GLUE_DIR = SHARED / "glue"
CHINESE_VOCAB = SHARED / "vocab" / "bert-base-chinese-vocab.txt"
METRICS = ("recover_rate", "rouge1", "rouge2", "rougeL")
LABELS = {"recover_rate": "Recover Rate", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
          "seconds": "s / sentence", "tokens": "tokens", "token_accuracy": "token acc."}


# --- options ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """How big a run is: sentences per cell and attack iterations (``None``: the script decides per cell)."""

    sentences: int
    iterations: int


class UsageParser(argparse.ArgumentParser):
    """argparse whose errors are usage errors: one line on stderr and exit code 2 (``run_script``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def parser(doc: str, full: Scale, quick: Scale) -> argparse.ArgumentParser:
    """The options every script shares; ``doc`` is the script's docstring (first line = description)."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0], epilog=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"tiny model, built-in sentences ({quick.sentences} per cell, {quick.iterations} iterations)")
    p.add_argument("--out", default=str(RESULTS), help="output directory (default: experiments/results)")
    p.add_argument("--data-dir", default=str(GLUE_DIR), help="GLUE directory (default: ../shared/glue)")
    p.add_argument("--sentences", type=int, default=None,
                   help=f"sentences per cell (default: {full.sentences}; quick: {quick.sentences})")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"attack iterations (default: {full.iterations}; quick: {quick.iterations})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--resume", action="store_true",
                   help="keep the sentences OUT/raw/NAME.jsonl already holds for the same setting; attack the rest")
    p.set_defaults(full_scale=full, quick_scale=quick)
    return p


def setup(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the scale from --quick, set threads, quiet the libraries, create the output directory."""
    import torch

    scale: Scale = args.quick_scale if args.quick else args.full_scale
    args.sentences = args.sentences or scale.sentences
    args.iterations = args.iterations or scale.iterations
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    args.started = time.perf_counter()
    args.load_start = os.getloadavg()[0]
    LEDGER.reset()  # the notes count what this run kept from an earlier one
    torch.set_num_threads(max(1, args.threads))
    quiet_libraries()
    return args


def describe_run(args: argparse.Namespace, extra: str = "") -> str:
    """One line for the Markdown: scale, wall time, machine load (timings on a shared machine are inflated), and
    how many rows this run kept from an earlier one (``fedsim.results.LEDGER``: every published table says it)."""
    wall = time.perf_counter() - args.started
    mode = "quick (tiny model, built-in pii sentences)" if args.quick else "full"
    return (f"Run: {mode}, {args.sentences} sentence(s) per cell, {args.iterations} iterations{extra}; "
            f"wall time {wall:.0f} s on {os.cpu_count()} CPU core(s), {args.threads} torch thread(s), "
            f"load average {args.load_start:.1f} at start and {os.getloadavg()[0]:.1f} at end (other jobs shared "
            f"the machine; per-sentence seconds are inflated accordingly)."
            + (" Resumed: sentences kept from an earlier run (raw rows marked `resumed`) keep that run's seconds; "
               "the wall time counts only this run." if getattr(args, "resume", False) else "")
            + " " + LEDGER.note())


def run_script(main: Callable[[], Any]) -> None:
    """A script's entry point: bad input (a missing GLUE file, an unknown model) is one line on stderr and exit
    code 2, not a traceback; Ctrl-C keeps what was written (rows are flushed as they come)."""
    name = Path(sys.argv[0]).name
    try:
        main()
    except UsageError as exc:
        sys.stderr.write(f"{name}: error: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: interrupted; the rows written so far are kept (rerun with --resume)\n")
        sys.exit(130)


# --- sentences ----------------------------------------------------------------------------------------------------
def glue_sentences(task: str, n: int, data_dir: str | Path, seed: int = 0, *, split: str = "dev",
                   min_words: int = 0, max_words: int | None = None) -> list[str]:
    """``n`` distinct sentences drawn at random (by ``seed``) from a GLUE split, first segment only, by word count."""
    import numpy as np

    texts = [t for t in dict.fromkeys(load_task(task, split, str(data_dir)).dataset["text"])  # RTE repeats premises
             if len(t.split()) >= min_words and (max_words is None or len(t.split()) <= max_words)]
    if len(texts) < n:
        raise UsageError(f"{task} {split}: only {len(texts)} sentences with {min_words}..{max_words} words, {n} asked")
    picks = np.random.default_rng(seed).choice(len(texts), size=n, replace=False)
    return [texts[int(i)] for i in picks]


def glue_mixture(n: int, data_dir: str | Path, seed: int = 0, max_words: int | None = 30) -> list[str]:
    """About n/3 sentences from each of CoLA, SST-2 and RTE (dev), interleaved, capped at ``max_words`` words."""
    per = -(-n // 3)
    pools = [glue_sentences(t, per, data_dir, seed, min_words=3, max_words=max_words) for t in ("cola", "sst2", "rte")]
    return [p[i] for i in range(per) for p in pools][:n]


def pii_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences of the built-in synthetic ``pii`` set (no data directory needed)."""
    return list(generate_pii("dev", seed=seed, size=n)["text"])


# --- attack grids -------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One setting of a table: labels (the row's key columns), the sentences and the attack job to run on them."""

    labels: dict[str, Any]
    texts: list[str]
    job: AttackJob = field(default_factory=AttackJob)


OnAttack = Callable[[dict, Any, Any, Any], None]  # (cell labels, prepared, reconstruction, truth)


def run_cells(cells: Sequence[Cell], name: str, out: Path, on_attack: OnAttack | None = None,
              checkpoint: Callable[[list[dict]], None] | None = None, resume: bool = False) -> list[dict]:
    """Attack every sentence of every cell with the library's runner; one row per sentence (cell labels included).

    Rows are appended to ``OUT/raw/NAME.jsonl`` (0600: reconstructions) as they come; ``checkpoint(rows so far)``
    runs after each sentence (e.g. to rewrite the tables), so an interrupted run still leaves what it finished.
    ``resume`` keeps the rows of an earlier run with the same labels, sentence and attack (``fedsim.results.Resume``)
    instead of attacking those sentences again (not with ``on_attack``: its hook needs the attack to run).
    ``OUT/summary.json`` records the rows and how many were kept.
    """
    files = RunDir(out, "experiment")
    raw_name = f"raw/{name}.jsonl"
    earlier = Resume.rows(files.path(raw_name), "attacked sentence", enabled=resume and on_attack is None)
    files.start(raw_name)
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        files.append(raw_name, row)
        record_experiment(out, name, {"status": "running", "rows": len(rows),
                                      "reused": sum(1 for r in rows if r.get("resumed")), "resume": resume})
        if checkpoint is not None:
            checkpoint(rows)

    for c, cell in enumerate(cells, 1):
        job = replace(cell.job, num_samples=None, batch_size=1)
        names = [*cell.labels, *_job_facts(job), "text_sha"]
        wanted = [{**_job_facts(job), **cell.labels, "text_sha": text_sha(t)} for t in cell.texts]
        kept = earlier.keep(wanted, names, label=f"[{name}] cell {c}/{len(cells)} {cell.labels}")
        todo = [i for i in range(len(cell.texts)) if i not in kept]
        for i in sorted(kept):
            add({**kept[i], "resumed": True})
        if not todo:
            continue
        text_file = files.write_text(f"raw/{name}_cell{c}.txt", "".join(cell.texts[i] + "\n" for i in todo))
        prepared = prepare(replace(job, text_file=str(text_file)))
        facts: dict[str, Any] = {}

        def hook(reconstruction, truth, prepared=prepared, labels=cell.labels) -> None:
            facts["tokens"] = sum(len(ids) - 2 for ids in truth.token_ids)  # content tokens, [CLS]/[SEP] excluded
            if on_attack is not None:
                on_attack(labels, prepared, reconstruction, truth)

        for n, (i, record) in enumerate(zip(todo, iter_attacks(prepared, on_attack=hook)), 1):
            row = {**record, **cell.labels, "tokens": facts["tokens"], "text_sha": text_sha(cell.texts[i])}
            add(row)  # the cell's labels win over the record's
            print(f"[{name}] cell {c}/{len(cells)} {cell.labels} sentence {n}/{len(todo)}: "
                  f"RR {row['recover_rate']:.2f} R-1 {row['rouge1']:.2f} R-2 {row['rouge2']:.2f} "
                  f"{row['seconds']:.1f} s", file=sys.stderr, flush=True)
    record_experiment(out, name, {"status": "attacked", "rows": len(rows), "reused": earlier.kept, "resume": resume})
    return rows


def text_sha(text: str) -> str:
    """Names a sentence in the raw rows without repeating it."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _job_facts(job: AttackJob) -> dict[str, Any]:
    """With the cell's labels and the sentence (``text_sha``): what makes two raw rows the same attack."""
    return {"method": job.method, "model": job.model, "init": job.init, "iterations": job.iterations,
            "seed": job.seed, "defenses": list(job.defense)}


# --- aggregation --------------------------------------------------------------------------------------------------
def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); nan for fewer than 2 values."""
    if len(values) < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values)))


def aggregate(rows: Iterable[dict], by: Sequence[str], metrics: Sequence[str] = (*METRICS, "seconds", "tokens")
              ) -> list[dict]:
    """Per group of ``by`` (in first-seen order): n, and mean / std / 95% CI half-width of each metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in by), []).append(r)
    stats = []
    for key, group in groups.items():
        entry: dict[str, Any] = dict(zip(by, key))
        entry["n"] = len(group)
        for m in metrics:
            xs = [float(r[m]) for r in group if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
            entry[f"{m}_mean"] = statistics.fmean(xs) if xs else float("nan")
            entry[f"{m}_std"] = statistics.stdev(xs) if len(xs) > 1 else float("nan")
            entry[f"{m}_ci95"] = ci95(xs)
        stats.append(entry)
    return stats


def pm(entry: dict, metric: str, digits: int = 3) -> str:
    """``mean ± std`` of one aggregated metric, for Markdown."""
    mean, std = entry.get(f"{metric}_mean", float("nan")), entry.get(f"{metric}_std", float("nan"))
    if not math.isfinite(mean):
        return "" if math.isnan(mean) else "inf"
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_table(out: Path, name: str, stats: list[dict], by: Sequence[str], title: str, notes: Sequence[str] = (),
                metrics: Sequence[str] = (*METRICS, "seconds", "tokens")) -> tuple[Path, Path]:
    """``OUT/NAME.csv`` (n, mean, std, ci95 per metric) and ``OUT/NAME.md`` (mean ± std) from aggregated stats."""
    columns = [*by, "n"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std", "ci95")]
    csv_path = write_csv(out / f"{name}.csv", stats, columns)
    headers = [*by, "n", *(LABELS.get(m, m) for m in metrics)]
    table = [[*(e[k] for k in by), e["n"], *(pm(e, m, 1 if m in ("seconds", "tokens") else 3) for m in metrics)]
             for e in stats]
    md_path = write_markdown(out / f"{name}.md", title, [markdown_table(headers, table)], notes)
    return csv_path, md_path


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """A script's table as CSV (``fedsim.results``: replaced atomically)."""
    return RunDir(path.parent, "experiment").write_csv(path.name, rows, columns, cell=_cell)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 6)
    return "" if value is None else value


def write_markdown(path: Path, title: str, blocks: Sequence[str], notes: Sequence[str] = ()) -> Path:
    body = [f"# {title}", "", *(b for block in blocks for b in (block, "")), *(f"{n}\n" for n in notes)]
    return RunDir(path.parent, "experiment").write_text(path.name, "\n".join(body).rstrip("\n") + "\n")


METRIC_NOTE = ("Metrics: Recover Rate = share of the sentence's tokens present in the reconstruction at the best "
               "recorded iteration (an oracle metric, as in TAG); ROUGE-1/2/L = F-measures of the final reconstruction. "
               "Cells show mean ± std over sentences (one sentence per attack, batch size 1); the CSV also has the 95% "
               "confidence half-width of the mean (Student t).")
