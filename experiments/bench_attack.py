"""What one attack iteration costs, next to one plain training step on the same input.

Defaults are the issue's setting: tinybert4 (``normal:0.02``), one 12-token sentence ([CLS] and [SEP] included),
2 CPU threads. An attack iteration is one step of the gradient-matching engine (forward, gradient with graph,
distance, gradient of the distance); a training step is forward + backward of the client's loss. Both are timed
one by one after a warm-up, and the median is reported (robust to other jobs on a shared machine; the mean is
printed too). ``OMP_WAIT_POLICY`` defaults to PASSIVE here (see below). The last line printed is one JSON object.

    python experiments/bench_attack.py
    python -m experiments.bench_attack --method dlg --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Must be set before torch loads OpenMP. With the default (spin, then sleep), two threads on a 2-core machine that
# other jobs share wait for each other at every one of the attack's many small parallel regions: measured here,
# 5.9 s per TAG iteration instead of 0.2 s under a load average of 7. PASSIVE lets a waiting thread yield at once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402  (after OMP_WAIT_POLICY)

from adversary.case import observe  # noqa: E402
from adversary.options import Budget  # noqa: E402
from adversary.registry import attack_options, run_attack  # noqa: E402
from fedsim.core.logs import quiet_libraries  # noqa: E402
from fedsim.core.models import build_model  # noqa: E402
from fedsim.core.text import load_tokenizer, make_batch  # noqa: E402
from fedsim.core.train import batch_loss  # noqa: E402

SENTENCE = "The sailors rode the breeze clear of the rocks."  # 12 tokens with [CLS] and [SEP] (CoLA dev #0)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _deltas(stamps: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Per-interval wall and process-CPU seconds between consecutive stamps."""
    pairs = list(zip(stamps[:-1], stamps[1:]))
    return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]


def time_attack(observation, method: str, iterations: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall and CPU time of each attack iteration, from the engine's per-step hook."""
    run_attack(method, observation, Budget(warmup), seed=0)
    stamps: list[tuple[float, float]] = []
    run_attack(method, observation, Budget(iterations + 1), seed=0,
               options=attack_options(method, {"hooks": (lambda m, it: stamps.append(_now()),)}))
    return _deltas(stamps)


def time_train_steps(model, batch, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall and CPU time of forward + backward of the batch's loss (the client's own work per step)."""
    stamps = []
    for i in range(warmup + steps + 1):
        if i >= warmup:
            stamps.append(_now())
        model.zero_grad(set_to_none=True)
        batch_loss(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return _deltas(stamps)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tinybert4")
    parser.add_argument("--init", default="normal:0.02")
    parser.add_argument("--method", default="tag")
    parser.add_argument("--sentence", default=SENTENCE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=50, help="attack iterations timed (default: 50)")
    parser.add_argument("--train-steps", type=int, default=50, help="training steps timed (default: 50)")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)

    quiet_libraries()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    model = build_model(args.model, args.init, seed=0)
    batch = make_batch(tokenizer, [args.sentence], [1])
    tokens = int(batch["attention_mask"].sum())
    observation, _ = observe(model, batch, tokenizer)

    train, train_cpu = time_train_steps(model, batch, args.train_steps, args.warmup)
    attack, attack_cpu = time_attack(observation, args.method, args.iterations, args.warmup)
    per_it, per_step = statistics.median(attack), statistics.median(train)
    result = {
        "model": args.model, "init": args.init, "method": args.method, "tokens": tokens, "threads": args.threads,
        "seconds_per_iteration": per_it, "seconds_per_train_step": per_step, "ratio": per_it / per_step,
        "seconds_per_1000_iterations": 1000 * per_it,
        "mean_seconds_per_iteration": statistics.fmean(attack), "mean_seconds_per_train_step": statistics.fmean(train),
        # process CPU seconds (all threads): what the work costs, less sensitive than wall time to other jobs
        "cpu_seconds_per_iteration": statistics.median(attack_cpu),
        "cpu_seconds_per_train_step": statistics.median(train_cpu),
        "iterations_timed": len(attack), "train_steps_timed": len(train), "load_average_1min": os.getloadavg()[0],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    print(f"{args.method} on {args.model}, {tokens} tokens, {args.threads} threads: "
          f"{per_it * 1000:.1f} ms per iteration (mean {result['mean_seconds_per_iteration'] * 1000:.1f}), "
          f"{per_step * 1000:.1f} ms per training step (mean {result['mean_seconds_per_train_step'] * 1000:.1f}), "
          f"ratio {result['ratio']:.2f}; CPU {result['cpu_seconds_per_iteration'] * 1000:.1f} ms per iteration, "
          f"{result['cpu_seconds_per_train_step'] * 1000:.1f} ms per step; load average "
          f"{result['load_average_1min']:.2f}", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
