"""`best` against each of its candidates, from the same runs: does choosing by gradient distance pick well?

    python experiments/bench_best.py --model tinybert4 --init normal:0.02 --defense noise:sigma=0.003 \
        --data-dir ../shared/glue --sentences 5 --iterations 200

The first ``--sentences`` examples of CoLA dev (as ``fedleak attack`` takes them), B = 1, the client gradient
through ``--defense`` (seeded as the CLI seeds it). For every sentence `best` runs once; each candidate it weighed
(tag, lamp, and span when span answered) is scored against the reference here, next to the one it chose. Printed:
one JSON line per sentence, then one JSON object with the means (per candidate, the chosen one, and the oracle
that picks the highest ROUGE-2, which no attacker can do).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

from adversary.case import observe
from adversary.metrics import rouge, score
from adversary.options import Budget
from adversary.registry import run_attack
from fedsim.core.seeds import batch_seed
from fedsim.harness import AttackJob, prepare
from fedsim.core.text import make_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinybert4")
    parser.add_argument("--init", default="normal:0.02")
    parser.add_argument("--dataset", default="cola")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--defense", action="append", default=[])
    parser.add_argument("--sentences", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    job = AttackJob(model=args.model, init=args.init, dataset=args.dataset, split="dev", data_dir=args.data_dir,
                    num_samples=args.sentences, method="best", iterations=args.iterations, seed=args.seed,
                    defense=list(args.defense))
    prepared = prepare(job)
    ex, rows = prepared.examples, []
    for index, text in enumerate(ex.texts):
        batch = make_batch(prepared.tokenizer, [text], [ex.labels[index]])
        observation, truth = observe(prepared.model, batch, prepared.tokenizer, gradient_fn=prepared.gradient_fn)
        rec = run_attack("best", observation, Budget(args.iterations), seed=batch_seed(args.seed, index))
        chosen = score(rec, truth)
        row = {"reference": truth.texts[0], "chosen": rec.info["best_attack"], "seconds": rec.seconds,
               "chosen_rouge1": chosen["rouge1"], "chosen_rouge2": chosen["rouge2"],
               "distances": rec.info["candidate_distances"]}
        for name, texts in rec.info["candidate_texts"].items():
            r = rouge(truth.texts[0], texts[0])
            row[f"{name}_rouge1"], row[f"{name}_rouge2"], row[f"{name}_text"] = r["rouge1"], r["rouge2"], texts[0]
        row["oracle_rouge2"] = max(row[f"{n}_rouge2"] for n in rec.info["candidate_texts"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = sorted({k for r in rows for k in r if k.endswith(("rouge1", "rouge2"))})
    means = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    print(json.dumps({"model": args.model, "defense": args.defense, "iterations": args.iterations,
                      "sentences": len(rows), "chosen": [r["chosen"] for r in rows], **means}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
