"""Attack experiments end to end: examples -> client gradients -> attack -> scores -> results files.

This is the only place where the client's side (batches, true labels) and the server's side (the attack) meet,
and they meet through :func:`adversary.case.observe`: the attack gets the :class:`Observation`, the scorer gets
the :class:`GroundTruth`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from adversary.case import GroundTruth, Reconstruction, observe
from adversary.metrics import score, special_ids_of
from adversary.options import Budget
from adversary.registry import get_attack
from defenses import build_gradient_fn
from fedsim.core.errors import UsageError, require_positive
from fedsim.core.seeds import batch_seed, rng
from fedsim.core.train import GradientFn
from fedsim.results import RunDir
from fedsim.settings import AttackJob

METRICS = ("recover_rate", "rouge1", "rouge2", "rougeL", "token_accuracy", "label_correct")
HONEST = ("token_precision", "token_f1", "rouge1_random_pairing", "certified_share")  # issue #11: adversary.metrics doc
DEFAULT_DATASET_SAMPLES = 10


@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]
    num_labels: int
    source: str


def load_examples(job: AttackJob) -> Examples:
    """The first ``num_samples`` examples of the split, or of the text file (labels drawn at random from the seed:
    the attacker must not be able to guess them from the text's position)."""
    if job.text_file:
        path = Path(job.text_file)
        if not path.is_file():
            raise UsageError(f"text file {job.text_file!r} not found")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise UsageError(f"text file {job.text_file!r} has no non-empty lines")
        lines = lines[: job.num_samples] if job.num_samples else lines
        labels = rng(job.seed).integers(0, 2, len(lines)).tolist()
        return Examples(lines, None, [int(y) for y in labels], 2, f"text-file:{path.name}")
    from fedsim.core.data import load_task

    task = load_task(job.dataset, job.split, job.data_dir, seed=job.seed)
    count = min(job.num_samples or DEFAULT_DATASET_SAMPLES, len(task))
    rows = task.dataset.select(range(count))
    pairs = list(rows["text_pair"]) if task.is_pair else None
    return Examples(list(rows["text"]), pairs, [int(y) for y in rows["label"]], task.num_labels, task.name)


def defense_gradient_fn(specs: tuple[str, ...] | list[str], seed: int = 0) -> GradientFn | None:
    """The client's gradient function with the requested defenses, from ``defenses.build_gradient_fn`` (its noise
    seeded from ``seed``, so a run repeats exactly)."""
    if not specs:
        return None
    return build_gradient_fn(list(specs), generator=seed)


@dataclass
class Prepared:
    """A job with its inputs loaded and validated: the attack, the examples, the tokenizer, the model."""

    job: AttackJob
    attack: Callable
    examples: Examples
    tokenizer: object
    model: object
    gradient_fn: GradientFn | None

    @property
    def num_batches(self) -> int:
        return math.ceil(len(self.examples.texts) / self.job.batch_size)


def prepare(job: AttackJob, gradient_fn: GradientFn | None = None) -> Prepared:
    """Validate the job and load what it needs; every bad input fails here, before any file is written."""
    from fedsim.core.models import build_model
    from fedsim.core.text import load_tokenizer

    for name, value in (("--batch-size", job.batch_size), ("--iterations", job.iterations)):
        require_positive(name, value)
    if job.num_samples is not None:
        require_positive("--num-samples", job.num_samples)
    attack = get_attack(job.method)  # fail on a bad method or option before loading anything heavy
    attack.options(job.attack_options)
    gradient_fn = gradient_fn or defense_gradient_fn(job.defense, job.seed)
    examples = load_examples(job)
    tokenizer = load_tokenizer(job.vocab)
    model = build_model(job.model, job.init, num_labels=examples.num_labels, vocab_size=len(tokenizer),
                        seed=job.seed)
    return Prepared(job, attack, examples, tokenizer, model, gradient_fn)


def iter_attacks(prepared: Prepared,
                 on_attack: Callable[[Reconstruction, GroundTruth], None] | None = None) -> Iterator[dict]:
    """Attack every batch (consecutive groups of ``batch_size``) and yield one result record per batch.

    ``on_attack(reconstruction, truth)``, when given, sees each batch's full :class:`Reconstruction` (loss curve,
    dummy snapshots) before its record is yielded: for analyses such as the experiments' figures."""
    from fedsim.core.text import make_batch

    job, examples, tokenizer, model = prepared.job, prepared.examples, prepared.tokenizer, prepared.model
    for index, start in enumerate(range(0, len(examples.texts), job.batch_size)):
        stop = start + job.batch_size
        batch = make_batch(tokenizer, examples.texts[start:stop], examples.labels[start:stop],
                           examples.pairs[start:stop] if examples.pairs else None, max_length=job.max_length)
        observation, truth = observe(model, batch, tokenizer, gradient_fn=prepared.gradient_fn,
                                     public_lengths=job.public_lengths)
        budget = Budget(job.iterations, job.attack_time_budget)  # seconds per batch; None: iterations alone
        reconstruction = prepared.attack(observation, budget, batch_seed(job.seed, index),
                                         prepared.attack.options(job.attack_options))
        if on_attack is not None:
            on_attack(reconstruction, truth)
        scores = score(reconstruction, truth, special_ids_of(tokenizer))
        yield {
            "method": job.method, "model": job.model, "init": job.init, "dataset": examples.source,
            "split": None if job.text_file else job.split, "batch": index, "batch_size": len(truth.texts),
            "reference": truth.texts, "reconstruction": reconstruction.texts,
            **{k: scores[k] for k in METRICS}, "analytic_label_correct": scores["analytic_label_correct"],
            **{k: scores[k] for k in HONEST}, "certified": list(reconstruction.certified),
            "labels": truth.labels, "predicted_labels": reconstruction.labels,
            "analytic_labels": reconstruction.info.get("analytic_labels"),
            "gradient_distance": reconstruction.gradient_distance, "seconds": reconstruction.seconds,
            "iterations": reconstruction.iterations, "seed": job.seed, "defenses": list(job.defense),
        }


def summarize(records: list[dict], job: AttackJob, wall_seconds: float) -> dict:
    """Means of the numeric fields, the count of batches, total attack seconds, and the job's settings."""
    numeric = [*METRICS, "analytic_label_correct", *HONEST, "gradient_distance", "seconds", "iterations"]
    means = {}
    for key in dict.fromkeys(numeric):
        values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        means[key] = float(np.mean(values)) if values else None
    job_fields = {k: v for k, v in asdict(job).items() if k != "attack_options"}
    return {**job_fields, **means, "count": len(records), "samples": sum(r["batch_size"] for r in records),
            "seconds_mean": means.get("seconds"), "seconds": float(sum(r["seconds"] for r in records)),
            "wall_seconds": wall_seconds, "defenses": list(job.defense)}


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (``kill``, a job scheduler's stop) like Ctrl-C, so the summary of what ran is still written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(job: AttackJob, gradient_fn: GradientFn | None = None, progress: bool = True,
            on_record: Callable[[dict], None] | None = None) -> tuple[list[dict], dict]:
    """Run the job, appending each record to ``OUT/results.jsonl`` as it comes and writing ``OUT/summary.json``
    (kind ``attack``) at the end, also when interrupted. Both are private (mode 0600): they hold the client's text
    (``fedsim.results.FILES["attack"]``)."""
    from tqdm.auto import tqdm

    prepared = prepare(job, gradient_fn)
    files = RunDir(job.out, "attack")
    files.start("results.jsonl")  # a fresh run replaces an old results file
    records: list[dict] = []
    start = time.perf_counter()
    bar = tqdm(total=prepared.num_batches, desc=f"{job.method} on {job.model}", unit="batch", disable=not progress)
    stream = iter_attacks(prepared)
    try:
        with terminate_as_interrupt():
            for record in stream:
                records.append(record)
                files.append("results.jsonl", record)
                bar.update(1)
                bar.set_postfix(rouge1=f"{np.mean([r['rouge1'] for r in records]):.3f}",
                                rr=f"{np.mean([r['recover_rate'] for r in records]):.3f}")
                if on_record:
                    on_record(record)
    finally:
        bar.close()
        summary = files.write_summary(summarize(records, job, time.perf_counter() - start))
    return records, summary


def format_table(records: list[dict], summary: dict, width: int = 48) -> str:
    """Per-batch scores and their mean, with the start of each reconstruction."""
    head = f"{'batch':>5} {'R-1':>5} {'R-2':>5} {'R-L':>5} {'RecRate':>7} {'TokAcc':>6} {'label':>5} {'sec':>7}  reconstruction"
    lines = [head, "-" * len(head)]
    for r in records:
        text = " | ".join(r["reconstruction"])
        text = text if len(text) <= width else text[: width - 3] + "..."
        lines.append(f"{r['batch']:>5} {r['rouge1']:5.3f} {r['rouge2']:5.3f} {r['rougeL']:5.3f} "
                     f"{r['recover_rate']:7.3f} {r['token_accuracy']:6.3f} {_num(r['label_correct'])} "
                     f"{r['seconds']:7.1f}  {text}")
    lines.append("-" * len(head))
    if not records:
        return "\n".join(lines + ["no batches attacked"])
    lines.append(f"{'mean':>5} {summary['rouge1']:5.3f} {summary['rouge2']:5.3f} {summary['rougeL']:5.3f} "
                 f"{summary['recover_rate']:7.3f} {summary['token_accuracy']:6.3f} {_num(summary['label_correct'])} "
                 f"{summary['seconds_mean']:7.1f}  ({summary['count']} batches, {summary['seconds']:.1f} s total)")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    """A 5-wide score, or n/a (label_correct is None when no sequence was paired with any overlap)."""
    return "  n/a" if value is None else f"{value:5.2f}"
