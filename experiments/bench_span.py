"""Measure the `span` attack: ROUGE, exact match and time per sentence on GLUE sentences.

    python experiments/bench_span.py --model tinybert4 --init normal:0.02 --batch-size 1 --sentences 20

Sentences are drawn at random (``--seed``) from the split; each batch is one FedSGD gradient of the model at its
initial weights. The last line printed is one JSON object with the means. Seconds are wall time of the attack
alone; CPU seconds (this process, all its threads) tell what it costs when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch

from adversary.case import GroundTruth, Observation
from adversary.options import Budget
from adversary.registry import get_attack
from adversary.span import SpanOptions
from fedsim.core.data import load_task
from adversary.metrics import score as metrics_score
from fedsim.core.models import build_model
from fedsim.core.text import decode, load_tokenizer, make_batch
from fedsim.core.train import batch_gradients


def score(reconstruction, truth: GroundTruth) -> dict:
    """adversary.metrics.score (pairs references with reconstructions), plus the exact-sentence rate."""
    result = metrics_score(reconstruction, truth)
    pairing = result["assignment"]
    exact = [j is not None and j < len(reconstruction.texts) and reconstruction.texts[j] == t
             for t, j in zip(truth.texts, pairing)]
    return {"rouge1": result["rouge1"], "rouge2": result["rouge2"], "rougeL": result["rougeL"],
            "exact": sum(exact) / len(exact)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tinybert4")
    ap.add_argument("--init", default="normal:0.02")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--sentences", type=int, default=20, help="sentences in all (rounded up to whole batches)")
    ap.add_argument("--task", default="cola")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--data-dir", default="../shared/glue")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--public-lengths", action="store_true", help="give the attack the sequence lengths")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=None, help="span's most linker descents per batch (default: 64 x B)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    data = load_task(args.task, args.split, data_dir=args.data_dir).dataset
    model = build_model(args.model, args.init, num_labels=2, seed=args.seed)
    attack = get_attack("span")
    order = list(range(len(data)))
    random.Random(args.seed).shuffle(order)
    batches = -(-args.sentences // args.batch_size)
    rows, total_seconds, total_cpu, passed = [], 0.0, 0.0, 0
    for b in range(batches):
        picked = [data[i] for i in order[b * args.batch_size:(b + 1) * args.batch_size]]
        batch = make_batch(tokenizer, [r["text"] for r in picked], [r["label"] for r in picked],
                           max_length=args.max_length)
        gradients = batch_gradients(model, batch)
        lengths = [int(n) for n in batch["attention_mask"].sum(1)]
        ids = [batch["input_ids"][i, :n].tolist() for i, n in enumerate(lengths)]
        truth = GroundTruth([decode(tokenizer, q) for q in ids], ids, batch["labels"].tolist())
        obs = Observation(model, gradients, len(picked), tokenizer,
                          seq_lengths=lengths if args.public_lengths else None)
        start, cpu_start = time.perf_counter(), time.process_time()
        most = args.budget if args.budget is not None else 64 * len(picked)
        rec = attack(obs, Budget(most), args.seed, SpanOptions(max_descents=args.budget))
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        total_cpu += cpu_seconds
        total_seconds += seconds
        passed += bool(rec.info.get("span_check_passed"))
        row = {**score(rec, truth), "seconds": seconds, "passed": rec.info.get("span_check_passed"),
               "certified": rec.info.get("certified_sequences"), "descents": rec.info.get("descents")}
        rows.append(row)
        print(json.dumps({"batch": b, **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}}),
              flush=True)
    n = len(rows)
    summary = {"model": args.model, "init": args.init, "batch_size": args.batch_size, "batches": n,
               "sentences": n * args.batch_size, "public_lengths": args.public_lengths,
               **{k: sum(r[k] for r in rows) / n for k in ("rouge1", "rouge2", "rougeL")},
               "exact_match": sum(r["exact"] for r in rows) / n,
               "seconds_per_sentence": total_seconds / (n * args.batch_size),
               "cpu_seconds_per_sentence": total_cpu / (n * args.batch_size),
               "span_check_passed_rate": passed / n, "threads": args.threads,
               "load_average_at_end": os.getloadavg()[0]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
