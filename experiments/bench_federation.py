"""What the curious server costs the federation: the same small federation with the attack off and on.

With the attack on, reconstruction jobs run in a Ray actor beside the clients, so a round does not wait for them;
on a small CPU machine they still compete for the cores. Round wall time is measured by the ServerApp from one
global evaluation to the next (training, aggregation, submitting the jobs and evaluation). Round 1 also starts
Ray's client workers, so the headline numbers are the mean over rounds 2..R ("steady"); round 1 is reported apart.
Prints one line per run on stderr and, last on stdout, one JSON object with ``round_seconds_off``,
``round_seconds_on`` and ``ratio`` (on / off) for the first ``--attack-actors`` value, and under ``actors`` the
same per pool size N with ``attacks_per_hour``: attack jobs completed per hour of the run's wall time (training
plus the wait for outstanding jobs). Each actor runs one torch thread (``--attack-threads 1``): "pinned to one
core". ``--ray-address`` runs everything on an existing cluster (e.g. two ``ray start`` nodes on this host).

    python experiments/bench_federation.py                  # the `fedleak simulate` default, attack off vs on
    python experiments/bench_federation.py --model tiny --init uniform:0.1 --rounds 4
    python experiments/bench_federation.py --model tiny --init uniform:0.1 --rounds 4 --attack-actors 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedsim import simulate  # noqa: E402
from fedsim.core.io import read_jsonl  # noqa: E402
from fedsim.core.logs import quiet_libraries  # noqa: E402
from fedsim.settings import Settings  # noqa: E402


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def main(argv: list[str] | None = None) -> dict:
    d = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=d.model)
    parser.add_argument("--init", default=d.init)
    parser.add_argument("--dataset", default=d.dataset)
    parser.add_argument("--clients", type=int, default=d.clients)
    parser.add_argument("--rounds", type=int, default=d.rounds)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--attack", default=d.attack, choices=("tag", "dlg"))
    parser.add_argument("--attack-iterations", type=int, default=d.attack_iterations)
    parser.add_argument("--attack-backend", default=d.attack_backend, choices=("ray", "inline"))
    parser.add_argument("--attack-actors", type=int, nargs="+", default=[1], help="pool sizes to measure (default 1)")
    parser.add_argument("--attack-clients", default="all", help="all, or K per round (default: all)")
    parser.add_argument("--attack-rounds", default="all", help="all, every:K or a list (default: all)")
    parser.add_argument("--ray-address", default="", help="an existing Ray cluster (default: a local Ray)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", default=None, help="keep both runs' files here (default: a temporary directory)")
    args = parser.parse_args(argv)

    quiet_libraries()
    root = args.out or tempfile.mkdtemp(prefix="bench_federation_")
    runs = {}
    if min(args.attack_actors) < 1:
        parser.error(f"--attack-actors must be >= 1, got {min(args.attack_actors)}")
    plan = [("off", "none", 1)] + [(f"on_{n}", args.attack, n) for n in args.attack_actors]
    for label, attack, actors in plan:
        settings = Settings(model=args.model, init=args.init, dataset=args.dataset, clients=args.clients,
                            rounds=args.rounds, batch_size=args.batch_size, attack=attack,
                            attack_iterations=args.attack_iterations, attack_backend=args.attack_backend,
                            attack_clients=args.attack_clients, attack_rounds=args.attack_rounds,
                            attack_actors=actors, attack_threads=1, ray_address=args.ray_address,
                            seed=args.seed, out=os.path.join(root, f"attack_{label}"))
        start = time.perf_counter()
        summary = simulate.run(settings, echo=lambda line: None)
        seconds = [r["seconds"] for r in read_jsonl(os.path.join(settings.out, "rounds.jsonl"))]
        runs[label] = {"summary": summary, "wall": time.perf_counter() - start, "first": seconds[0],
                       "steady": _mean(seconds[1:]) if len(seconds) > 1 else seconds[0]}
        print(f"attack {label:3s}: round 1 {seconds[0]:.1f} s, later rounds {runs[label]['steady']:.2f} s, "
              f"{runs[label]['wall']:.0f} s in all (status {summary['status']})", file=sys.stderr, flush=True)

    off, on = runs["off"], runs[f"on_{args.attack_actors[0]}"]
    actors = {str(n): {"round_seconds_on": runs[f"on_{n}"]["steady"], "ratio": runs[f"on_{n}"]["steady"] / off["steady"],
                       "wall_seconds_on": runs[f"on_{n}"]["wall"],
                       "attacks_scored": runs[f"on_{n}"]["summary"]["attacks"]["scored"],
                       "attacks_per_hour": runs[f"on_{n}"]["summary"]["attacks"]["scored"] * 3600
                       / runs[f"on_{n}"]["wall"],
                       "attack_seconds_per_job": runs[f"on_{n}"]["summary"]["attack_seconds"]}
              for n in args.attack_actors}
    result = {
        "model": args.model, "init": args.init, "dataset": args.dataset, "clients": args.clients,
        "rounds": args.rounds, "batch_size": args.batch_size, "attack": args.attack,
        "attack_iterations": args.attack_iterations, "attack_backend": args.attack_backend, "cpus": os.cpu_count(),
        "round_seconds_off": off["steady"], "round_seconds_on": on["steady"], "ratio": on["steady"] / off["steady"],
        "first_round_seconds_off": off["first"], "first_round_seconds_on": on["first"],
        "wall_seconds_off": off["wall"], "wall_seconds_on": on["wall"],
        "attack_seconds_per_job": on["summary"]["attack_seconds"], "attacks_scored": on["summary"]["attacks"]["scored"],
        "attack_errors": on["summary"]["attacks"]["errors"], "rouge1": on["summary"]["rouge1"],
        "load_average": os.getloadavg()[0], "ray_address": args.ray_address or "local", "actors": actors,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
