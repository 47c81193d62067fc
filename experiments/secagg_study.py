"""Does secure aggregation protect? The worst-case attack on Flower's SecAgg+ aggregate, per (model, K, B).

    python experiments/secagg_study.py --time-budget 60 --resume

Per cell (model, K clients, B examples each), one FedSGD round of K clients from the model's initial weights:

* ``secagg``: the federation runs under Flower's SecAgg+ (``fedsim.simulate.run_in_process`` with ``--secagg``:
  the real ServerApp and ClientApp, Flower's SecAggPlusWorkflow and secaggplus_mod, in this process without Ray),
  and the curious server attacks the unmasked aggregate with ``best`` as one batch of the K x B examples, with
  the protocol's quantisation error as the gradient's published bound; its leakage record is the row.
* ``plain sum``: the same K x B examples without the protocol: the exact batch gradient of their union at the same
  weights (what the server would unmask with no quantisation), attacked and scored the same way.

Beside each cell: N, the aggregate's tokens ([CLS]/[SEP] included), against d, the hidden size (exact recovery from
first-layer spans needs N <= d). Then the training accuracy with and without SecAgg: one small federation per model
(``--train-clients`` x ``--train-batch``, ``--train-rounds`` rounds, dev accuracy on every dev example).

Written to ``--out`` as it goes: ``secagg_study.csv`` (one row per attacked aggregate: scores, per-sentence ROUGE-1
spread, N, d), ``secagg_study_train.csv`` (accuracy per model and protocol), ``secagg_study.md`` (both tables and
the notes), ``raw/secagg_study.jsonl`` (0600: the rows with texts; ``--resume`` keeps them) and each federation's
own run directory under ``raw/secagg_study_runs/``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  (sets the OpenMP and offline environment before torch loads)

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from adversary.case import observe  # noqa: E402
from adversary.metrics import assign, rouge_matrices, special_ids_of  # noqa: E402
from adversary.span.subspace import gradient_span  # noqa: E402
from experiments.bench_batch import exact_rate  # noqa: E402
from fedsim import task  # noqa: E402
from fedsim.attack_actor import Job, run_job  # noqa: E402
from fedsim.core import seeds  # noqa: E402
from fedsim.core.errors import UsageError  # noqa: E402
from fedsim.core.text import load_tokenizer  # noqa: E402
from fedsim.core.train import batch_gradients  # noqa: E402
from fedsim.recorder import Recorder  # noqa: E402
from fedsim.report import markdown_table  # noqa: E402
from fedsim.results import LEDGER, Resume, RunDir, read_records, record_experiment  # noqa: E402
from fedsim.settings import Settings  # noqa: E402
from fedsim.server_app import run_server  # noqa: E402
from fedsim.simulate import InProcessGrid, run_in_process  # noqa: E402
from fedsim.strategies import AGGREGATE  # noqa: E402

NAME = "secagg_study"
MODELS = {"tinybert4": "normal:0.02", "minilm-l6": "pretrained", "tiny": "uniform:0.1"}
PROTOCOLS = ("plain sum", "secagg")
DEFAULT_LEVELS = Settings.__dataclass_fields__["secagg_quantization_range"].default  # Flower's 2^22
UNIT = ("kind", "model", "init", "K", "B", "protocol", "rounds", "seed", "time_budget", "dataset")
ATTACK_COLUMNS = ("model", "init", "K", "B", "protocol", "sequences", "tokens", "hidden", "over_rank_limit",
                  "exact", "rouge1", "rouge1_std", "rouge2", "certified_share", "sigma_min", "noise_spectral",
                  "seconds", "error")
TRAIN_COLUMNS = ("model", "init", "protocol", "K", "B", "rounds", "dev_examples", "initial_accuracy",
                 "final_accuracy", "accuracy_ci95", "clipped_values", "seconds")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = common.UsageParser(description=__doc__.strip().splitlines()[0], epilog=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tinybert4", "minilm-l6"],
                   help="tinybert4 (normal:0.02), minilm-l6 (pretrained) or tiny (uniform:0.1)")
    p.add_argument("--clients", nargs="+", type=int, default=[2, 4, 8], help="K (default: 2 4 8)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4], help="B (default: 1 2 4)")
    p.add_argument("--time-budget", type=float, default=60.0, help="seconds per attack job (default: 60)")
    p.add_argument("--dataset", default="pii", help="pii (built in) or sst2 (with --data-dir)")
    p.add_argument("--data-dir", default="", help="GLUE directory for sst2")
    p.add_argument("--fine-range", type=int, default=0,
                   help="also run SecAgg+ with this quantisation range on the B = 1 cells (e.g. 268435456 = 2^28; "
                        "the server sets it in the protocol's setup) as protocol 'secagg Q=...' (default: 0, no)")
    p.add_argument("--train-clients", type=int, default=4)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-rounds", type=int, default=8, help="rounds of the training runs (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--quick", action="store_true", help="tiny model, K = 2, B = 1, 5 s budget, 2 training rounds")
    p.add_argument("--out", default=str(common.RESULTS), help="output directory (default: experiments/results)")
    p.add_argument("--resume", action="store_true", help="keep the rows OUT/raw/secagg_study.jsonl already has")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.clients, args.batch_sizes, args.time_budget = ["tiny"], [2], [1], 5.0
        args.train_clients, args.train_rounds = 2, 2
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        raise UsageError(f"unknown model {bad[0]!r}; accepted: {', '.join(MODELS)}")
    if any(k < 2 for k in [*args.clients, args.train_clients]):
        raise UsageError(f"SecAgg+ needs at least 2 clients, got {min([*args.clients, args.train_clients])}")
    if args.fine_range and not 2 <= args.fine_range <= 2**30 // max(args.clients):
        raise UsageError(f"--fine-range must be from 2 to 2^30 / {max(args.clients)} clients, got {args.fine_range}")
    if args.train_rounds < 0:
        raise UsageError(f"--train-rounds must be 0 (no training runs) or more, got {args.train_rounds}")
    for name in ("batch_sizes", "train_batch", "threads"):
        values = getattr(args, name)
        if any(v <= 0 for v in (values if isinstance(values, list) else [values])):
            raise UsageError(f"--{name.replace('_', '-')} must be positive whole numbers, got {values}")
    if not 0 < args.time_budget < math.inf:
        raise UsageError(f"--time-budget must be a positive number of seconds, got {args.time_budget}")
    args.out = Path(args.out)
    return args


def fine_name(levels: int) -> str:
    exponent = math.log2(levels)
    return f"secagg Q=2^{exponent:.0f}" if exponent.is_integer() else f"secagg Q={levels}"


# --- one federation -----------------------------------------------------------------------------------------------
def settings(args: argparse.Namespace, model: str, **overrides: Any) -> Settings:
    """The federation behind a cell or a training run (FedSGD at lr 0.1, the study's seed and data)."""
    base = dict(model=model, init=MODELS[model], dataset=args.dataset, data_dir=args.data_dir, seed=args.seed,
                attack="none", attack_backend="inline", attack_threads=args.threads, attack_rounds="all",
                attack_clients="all", attack_time_budget=args.time_budget, rounds=1, eval_examples=8)
    return Settings(**{**base, **overrides})


def aggregate_row(record: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A leakage record of an aggregate as a table row: exact rate, ROUGE means and per-sentence spread."""
    if "error" in record:
        return {"error": record["error"], "seconds": record.get("seconds")}
    refs, recs = record["reference"], record["reconstruction"]
    matrices = rouge_matrices(refs, recs)
    pairing = assign(refs, recs)
    per_sentence = [float(matrices["rouge1"][i, j]) if j is not None else 0.0 for i, j in enumerate(pairing)]
    ids = lambda texts: [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]  # noqa: E731
    return {"exact": exact_rate(ids(refs), ids(recs), special_ids_of(tokenizer)), "rouge1": record["rouge1"],
            "rouge1_std": statistics.stdev(per_sentence) if len(per_sentence) > 1 else 0.0,
            "rouge2": record["rouge2"], "certified_share": record.get("certified_share"),
            "seconds": record["seconds"], "reference": refs, "reconstruction": recs}


def union(s: Settings) -> tuple[torch.nn.Module, dict, list[int]]:
    """The round's global model and the batch of every client's examples (in client order): what the aggregate
    is the gradient of."""
    train = task.load_split(s.dataset, "train", s.data_dir, s.seed)
    used = [i for c in range(s.clients) for i in task.pick_examples(
        task.client_shard(s.dataset, s.data_dir, s.partition, s.clients, c, s.seed), s.batch_size, s.seed, 1, c)]
    net = task.model_with(s.model, train.num_labels, s.vocab, task.state_of(task.initial_model(s, train.num_labels)))
    return net, task.batch_of(train, used, s.vocab, s.max_length), used


def first_layer(true: dict[str, torch.Tensor], observed: dict[str, torch.Tensor] | None) -> dict[str, float]:
    """Why exact recovery can fail: the weakest input direction span must separate (the smallest singular value of
    the exact first-layer attention gradient within the rank span finds in it) against the spectral norm of the
    error in the server's copy of that gradient."""
    names = sorted(n for n in true if ".layer.0.attention.self." in n and n.endswith(".weight"))
    exact = [true[n].double() for n in names]
    rank = gradient_span(exact).rank
    noise = 0.0 if observed is None else float(torch.linalg.matrix_norm(
        torch.cat([observed[n].double() for n in names]) - torch.cat(exact), 2))
    return {"sigma_min": float(torch.linalg.svdvals(torch.cat(exact))[rank - 1]), "noise_spectral": noise}


def plain_cell(args: argparse.Namespace, model: str, k: int, b: int) -> dict[str, Any]:
    """The same clients' examples without the protocol: their union's exact batch gradient, attacked alike."""
    s = settings(args, model, clients=k, batch_size=b)
    net, batch, _ = union(s)
    tokenizer = load_tokenizer(s.vocab)
    observation, truth = observe(net, batch, tokenizer, public_lengths=False)
    job = Job(round=1, client=AGGREGATE, method="best", iterations=64 * k * b,
              seed=seeds.derive_seed(s.seed, 1, AGGREGATE, 11), seconds=args.time_budget)
    record = run_job(job, observation, truth)
    return {**aggregate_row(record, tokenizer), "tokens": sum(len(ids) for ids in truth.token_ids),
            "hidden": int(net.config.hidden_size), **first_layer(observation.gradients, None)}


def secagg_cell(args: argparse.Namespace, model: str, k: int, b: int, levels: int = DEFAULT_LEVELS
                ) -> dict[str, Any]:
    """One round under SecAgg+ (``levels``: its quantisation range) with the curious server attacking the
    aggregate: its leakage record, and the error of the aggregate it unmasked against the union's exact gradient."""
    run_dir = args.out / "raw" / f"{NAME}_runs" / f"{model}_K{k}_B{b}_Q{levels}"
    s = settings(args, model, clients=k, batch_size=b, secagg=True, secagg_quantization_range=levels,
                 attack="best", attack_iterations=64 * k * b, out=str(run_dir))
    result = run_server(InProcessGrid(k), s, Recorder(s, echo=lambda line: None))
    record, = read_records(run_dir, "leakage.jsonl")
    net, batch, _ = union(s)
    start, end = task.state_of(net), result.arrays.to_torch_state_dict()
    observed = {n: (start[n].double() - end[n].double()) / s.lr for n in start}  # what the server derives
    return {**aggregate_row(record, load_tokenizer(s.vocab)), "tokens": record.get("tokens"),
            "hidden": record.get("hidden_size"),
            **first_layer(batch_gradients(net, batch), observed)}


def train_row(args: argparse.Namespace, model: str, secagg: bool) -> dict[str, Any]:
    """A small federation's dev accuracy, with or without SecAgg+."""
    run_dir = args.out / "raw" / f"{NAME}_runs" / f"{model}_train_{'secagg' if secagg else 'plain'}"
    s = settings(args, model, clients=args.train_clients, batch_size=args.train_batch, rounds=args.train_rounds,
                 secagg=secagg, eval_examples=0, out=str(run_dir))
    start = time.perf_counter()
    lines: list[str] = []
    summary = run_in_process(s, echo=lines.append)
    dev = len(task.load_split(s.dataset, "dev", s.data_dir, s.seed))
    final = summary["final_accuracy"]
    clipped = sum(int(line.split("clipped ")[1].split()[0]) for line in lines if "SecAgg+ clipped" in line)
    return {"dev_examples": dev, "initial_accuracy": summary["initial_accuracy"],
            "final_accuracy": final, "accuracy_ci95": 1.96 * math.sqrt(final * (1 - final) / dev),
            "clipped_values": clipped, "seconds": time.perf_counter() - start,
            "accuracy_by_round": [r["eval_accuracy"] for r in read_records(run_dir, "rounds.jsonl")]}


# --- tables -------------------------------------------------------------------------------------------------------
def write_tables(args: argparse.Namespace, rows: list[dict[str, Any]], trains: list[dict[str, Any]]) -> None:
    common.write_csv(args.out / f"{NAME}.csv", rows, ATTACK_COLUMNS)
    common.write_csv(args.out / f"{NAME}_train.csv", trains, TRAIN_COLUMNS)
    fmt = lambda v, d=3: "" if v is None else f"{v:.{d}f}"  # noqa: E731
    sci = lambda v: "" if v is None else "0" if v == 0 else f"{v:.1e}"  # noqa: E731
    attack = [[r["model"], r["K"], r["B"], r["protocol"], r.get("sequences"), r.get("tokens"), r.get("hidden"),
               "yes" if r.get("over_rank_limit") else "no", fmt(r.get("exact"), 2),
               f"{fmt(r.get('rouge1'))} ± {fmt(r.get('rouge1_std'))}" if r.get("rouge1") is not None else
               r.get("error", ""), fmt(r.get("rouge2")), fmt(r.get("certified_share"), 2), sci(r.get("sigma_min")),
               sci(r.get("noise_spectral")), fmt(r.get("seconds"), 0)] for r in rows]
    train = [[t["model"], t["protocol"], f"{t['K']} x {t['B']}, {t['rounds']} rounds",
              fmt(t["initial_accuracy"]), f"{t['final_accuracy']:.3f} ± {t['accuracy_ci95']:.3f}",
              t["clipped_values"], fmt(t["seconds"], 0)] for t in trains]
    wall = time.perf_counter() - args.started
    notes = [
        f"Attack: `best` (span first, then TAG and LAMP warm-started from it), {args.time_budget:g} s per aggregate "
        f"(Budget.seconds; iterations 64 x K x B), sequence lengths read from the gradient, seed {args.seed}, data "
        f"`{args.dataset}`. One aggregate per cell (one FedSGD round of K clients from the initial weights, lr 0.1): "
        "n = K x B sentences; ROUGE-1 is mean ± std over those sentences (each paired with a reconstruction by the "
        "ROUGE-1-maximising assignment); exact = share recovered token for token (multiset match); certified = "
        "share the attack certified (its batch reproduces the gradient within the published bound).",
        "`secagg`: the round ran under Flower's SecAgg+ (SecAggPlusWorkflow + secaggplus_mod, clipping range 1.0, "
        "quantisation range 2^22: each update value rounded stochastically to a step of 4.8e-7); the server "
        "attacked the unmasked aggregate with the protocol's quantisation error as its published bound. `plain "
        "sum`: the same K x B examples' exact batch gradient, no protocol and no quantisation.",
        "N = tokens in the aggregate ([CLS]/[SEP] included), d = hidden size; exact recovery from first-layer spans "
        "needs N <= d. σ_min = the smallest singular value of the exact first-layer attention gradient within its rank (as "
        "span finds it: the drop to float32 noise), the weakest input direction span must separate; ‖E‖₂ = spectral norm of the error in the first-layer gradient the "
        "server unmasked (0: exact). Span cannot separate directions below the error.",
        *([f"`{fine_name(args.fine_range)}` (B = 1 cells): SecAgg+ with a quantisation range of {args.fine_range} "
           f"(step {2 / args.fine_range:.1e}) instead of 2^22; SecAgg+'s setup stage takes the range from the "
           "server, so a curious server may choose it."] if args.fine_range else []),
        f"Training: {args.train_clients} clients x B = {args.train_batch}, {args.train_rounds} FedSGD rounds, dev "
        "accuracy on every dev example, ± the 95% binomial half-width; `clipped` = update values the clipping range "
        "cut (FedAvg is unbiased only when it is 0).",
        f"Run: wall time {wall:.0f} s on {os.cpu_count()} CPU core(s), {args.threads} torch thread(s), load average "
        f"{args.load_start:.1f} at start and {os.getloadavg()[0]:.1f} at end (other jobs shared the machine)."
        + " " + LEDGER.note(),
    ]
    common.write_markdown(args.out / f"{NAME}.md", "Does secure aggregation protect?", [
        markdown_table(["model", "K", "B", "protocol", "n", "N tokens", "d", "N > d", "exact", "ROUGE-1",
                        "ROUGE-2", "certified", "σ_min", "‖E‖₂", "s"], attack),
        markdown_table(["model", "protocol", "federation", "dev acc. before", "dev acc. after", "clipped", "s"],
                       train)], notes)


# --- the run ------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.started, args.load_start = time.perf_counter(), os.getloadavg()[0]
    LEDGER.reset()
    torch.set_num_threads(args.threads)
    common.quiet_libraries()
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    protocols = [*PROTOCOLS, *([fine_name(args.fine_range)] if args.fine_range else [])]
    units = [{"kind": "attack", "model": m, "init": MODELS[m], "K": k, "B": b, "protocol": p, "rounds": 1,
              "seed": args.seed, "time_budget": args.time_budget, "dataset": args.dataset}
             for m in args.models for k in args.clients for b in args.batch_sizes for p in protocols
             if p in PROTOCOLS or b == 1]  # the finer grid at B = 1, where the default grid's noise decides
    trains_wanted = [{"kind": "train", "model": m, "init": MODELS[m], "K": args.train_clients, "B": args.train_batch,
                      "protocol": p, "rounds": args.train_rounds, "seed": args.seed, "time_budget": None,
                      "dataset": args.dataset} for m in args.models for p in ("plain", "secagg")
                     if args.train_rounds]
    files = RunDir(args.out, "experiment")
    raw = f"raw/{NAME}.jsonl"
    earlier = Resume.rows(files.path(raw), "attacked aggregate", enabled=args.resume)
    kept = earlier.keep([*units, *trains_wanted], UNIT, label=f"[{NAME}]")
    files.start(raw)
    done: dict[int, dict[str, Any]] = {}

    def add(i: int, row: dict[str, Any]) -> None:
        done[i] = row
        files.append(raw, row)
        rows = [done[j] for j in sorted(done)]
        write_tables(args, [r for r in rows if r["kind"] == "attack"], [r for r in rows if r["kind"] == "train"])
        record_experiment(args.out, NAME, {"status": "running", "rows": len(done), "reused": len(kept)})

    for i in sorted(kept):
        add(i, {**kept[i], "resumed": True})
    todo = [i for i in range(len(units) + len(trains_wanted)) if i not in kept]
    bar = tqdm(total=len(todo), desc=NAME, unit="run")
    for i in todo:
        if i < len(units):
            u = units[i]
            if u["protocol"] == "plain sum":
                cell = plain_cell(args, u["model"], u["K"], u["B"])
            else:
                levels = DEFAULT_LEVELS if u["protocol"] == "secagg" else args.fine_range
                cell = secagg_cell(args, u["model"], u["K"], u["B"], levels)
            row = {**u, **cell, "sequences": u["K"] * u["B"], "resumed": False}
            row["over_rank_limit"] = row["tokens"] is not None and row["tokens"] > row["hidden"]
            bar.set_postfix_str(f"{u['model']} K={u['K']} B={u['B']} {u['protocol']}: R-1 "
                                f"{row.get('rouge1') or 0:.2f} exact {row.get('exact') or 0:.2f}")
        else:
            w = trains_wanted[i - len(units)]
            row = {**w, **train_row(args, w["model"], w["protocol"] == "secagg"), "resumed": False}
            bar.set_postfix_str(f"{w['model']} {w['protocol']}: acc {row['final_accuracy']:.3f}")
        add(i, row)
        bar.update(1)
    bar.close()
    record_experiment(args.out, NAME, {"status": "done", "rows": len(done), "reused": len(kept)})
    rows = [done[j] for j in sorted(done)]
    result = {"bench": NAME, "time_budget": args.time_budget, "dataset": args.dataset, "seed": args.seed,
              "wall_seconds": round(time.perf_counter() - args.started, 1),
              "cells": [{k: r.get(k) for k in ("model", "K", "B", "protocol", "tokens", "hidden", "exact", "rouge1",
                                                "rouge1_std", "rouge2", "certified_share", "sigma_min",
                                                "noise_spectral", "seconds", "error")}
                        for r in rows if r["kind"] == "attack"],
              "training": [{k: r.get(k) for k in ("model", "protocol", "final_accuracy", "accuracy_ci95",
                                                   "clipped_values")}
                           for r in rows if r["kind"] == "train"]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    common.run_script(main)
