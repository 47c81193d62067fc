"""Attack throughput past one Ray node: 1 and 2 actors on a local Ray, 2 actors on a two-node Ray cluster, and the
server's own work per attacked update (what caps the throughput however many actors there are).

Three parts, each with the same federation (``bench_federation.main``: attack off, then on):

* ``local``: a local Ray, the attack off and on with 1 and 2 actors (one torch thread each);
* ``cluster``: a two-node Ray cluster started here on this host (``ray start --head --num-cpus 1`` and
  ``ray start --address ... --num-cpus 1``, each its own ports and temp dir, stopped afterwards by signalling their
  own sessions: ``fedsim.deploy.processes``), the attack off and on with 2 actors, joined with ``--ray-address``;
* ``server_work``: per attacked update, the ServerApp's own time, ``n`` times per model: building the
  observation (``CuriousServer.observation``: both weight sets to torch, the model at the global weights, the
  gradient ``(w_global - w_client) / lr`` in float64, the rounding-error bound) and handing it to the actors
  (``ray.put``), with the observation's size.

Prints one line per run on stderr and, last on stdout, one JSON object: ``local`` and ``cluster`` (bench_federation's
objects), ``table`` (per setting: attacks per hour, round seconds off/on, seconds per job), ``server_work`` and the
load average at start and end (the machine may be shared: say so with the figures).

    python experiments/bench_cluster.py --model tinybert4 --init normal:0.02 --rounds 3
    python experiments/bench_cluster.py --parts server_work --server-models tinybert4 bert-base
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402
from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict  # noqa: E402

from experiments import bench_federation  # noqa: E402
from fedsim import task  # noqa: E402
from fedsim.attack_actor import InlineAttacker  # noqa: E402
from fedsim.deploy.processes import Processes, free_port  # noqa: E402
from fedsim.server_app import attack_plan  # noqa: E402
from fedsim.settings import Settings  # noqa: E402
from fedsim.strategies import CuriousServer, FedAvgWithLog  # noqa: E402

PARTS = ("local", "cluster", "server_work")
BIN = Path(sys.executable).parent


def start_cluster(root: Path) -> tuple[Processes, str]:
    """A head and a worker node on this host, one CPU each, own ports and temp dir; returns them and the address."""
    procs = Processes(logs=root, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, cwd=root)
    port = free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    for name, role in (("head", ["--head", "--port", str(port), "--include-dashboard", "false",
                                 "--ray-client-server-port", str(free_port())]),
                       ("worker", ["--address", address])):
        ports = [x for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port",
                                "--object-manager-port") for x in (flag, str(free_port()))]
        procs.start(name, [str(BIN / "ray"), "start", "--block", "--num-cpus", "1", "--num-gpus", "0",
                           "--object-store-memory", str(200 * 2**20), "--disable-usage-stats", "--temp-dir", str(root),
                           *role, *ports])
        if not procs.wait_for(name, "Ray runtime started", 180):
            procs.stop()
            raise RuntimeError(f"ray {name} node did not start:\n{procs.tail(name)}")
    return procs, address


def _mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def server_work(model: str, init: str, batch_size: int, n: int, seed: int = 0) -> dict:
    """Seconds the ServerApp spends per attacked update before an actor gets it: the observation, then ``ray.put``."""
    s = Settings(model=model, init=init, batch_size=batch_size, clients=2, attack="tag", seed=seed)
    train = task.load_split(s.dataset, "train", s.data_dir, s.seed)
    plan = attack_plan(s, train)
    server = CuriousServer(FedAvgWithLog(), InlineAttacker(), plan)
    net = task.initial_model(s, train.num_labels)
    global_arrays = ArrayRecord(task.state_of(net))
    shard = task.client_shard(s.dataset, s.data_dir, s.partition, s.clients, 0, s.seed)
    used = task.pick_examples(shard, batch_size, s.seed, 1, 0)
    gradient_fn, _ = task.client_defense("", batch_size, len(shard))
    task.local_train(net, [task.batch_of(train, used, s.vocab, s.max_length)], s.lr, gradient_fn)
    metadata = Metadata(run_id=1, message_id="m0", src_node_id=1000, dst_node_id=0, reply_to_message_id="x",
                        group_id="1", created_at=time.time(), ttl=3600, message_type="train")  # outside a run
    reply = Message(content=RecordDict({"arrays": ArrayRecord(task.state_of(net)),
                                        "metrics": MetricRecord({"client": 0, "num-examples": batch_size})}),
                    metadata=metadata)
    server._global = {1: global_arrays}
    build, put, size = [], [], 0
    for _ in range(n):
        start = time.perf_counter()
        observation = server.observation(1, reply)
        middle = time.perf_counter()
        ref = ray.put(observation)
        build.append(middle - start)
        put.append(time.perf_counter() - middle)
        size = sum(t.numel() * t.element_size() for t in [*observation.model.state_dict().values(),
                                                           *observation.gradients.values()])
        del ref, observation
    total = [b + p for b, p in zip(build, put)]
    return {"model": model, "parameters": sum(p.numel() for p in net.parameters()), "observation_mb": size / 2**20,
            "observation_seconds": _mean_sd(build), "ray_put_seconds": _mean_sd(put), "total_seconds": _mean_sd(total),
            "max_updates_per_hour": 3600 / statistics.fmean(total)}


def _row(setting: str, actors: str, bench: dict) -> dict:
    on = bench["actors"][actors]
    return {"setting": setting, "actors": int(actors), "attacks_per_hour": on["attacks_per_hour"],
            "round_seconds_off": bench["round_seconds_off"], "round_seconds_on": on["round_seconds_on"],
            "attack_seconds_per_job": on["attack_seconds_per_job"], "attacks_scored": on["attacks_scored"],
            "wall_seconds_on": on["wall_seconds_on"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--model", default="tinybert4")
    parser.add_argument("--init", default="normal:0.02")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--attack-iterations", type=int, default=150)
    parser.add_argument("--server-models", nargs="+", default=None, help="models for server_work (default: --model)")
    parser.add_argument("--repeats", type=int, default=5, help="server_work measurements per model")
    parser.add_argument("--out", default=None, help="keep the runs' files here (default: a temporary directory)")
    args = parser.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_cluster_"))
    common = ["--model", args.model, "--init", args.init, "--rounds", str(args.rounds), "--batch-size",
              str(args.batch_size), "--attack-iterations", str(args.attack_iterations)]
    result: dict = {"load_average_start": os.getloadavg(), "cpus": os.cpu_count(), "model": args.model,
                    "init": args.init, "rounds": args.rounds, "attack_iterations": args.attack_iterations, "table": []}
    if "local" in args.parts:
        local = bench_federation.main([*common, "--attack-actors", "1", "2", "--out", str(root / "local")])
        result["local"] = local
        result["table"] += [_row("local Ray", n, local) for n in ("1", "2")]
    if "cluster" in args.parts:
        temp = Path(tempfile.mkdtemp(prefix="bc", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
        procs, address = start_cluster(temp)
        try:
            cluster = bench_federation.main([*common, "--attack-actors", "2", "--ray-address", address,
                                             "--out", str(root / "cluster")])
        finally:
            left = procs.stop()
            shutil.rmtree(temp, ignore_errors=True)
        result["cluster"] = {**cluster, "nodes": 2, "cpus_per_node": 1, "stopped_cleanly": not left}
        result["table"].append(_row("two-node Ray cluster", "2", cluster))
    if "server_work" in args.parts:
        with warnings.catch_warnings():  # Ray's FutureWarning about GPU env vars
            warnings.simplefilter("ignore", FutureWarning)
            ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            result["server_work"] = [server_work(m, args.init, args.batch_size, args.repeats)
                                     for m in args.server_models or [args.model]]
        finally:
            ray.shutdown()
    result["load_average_end"] = os.getloadavg()
    for row in result["table"]:
        print(f"{row['setting']:22s} {row['actors']} actor(s): {row['attacks_per_hour']:6.0f} attacks/h, round "
              f"{row['round_seconds_off']:.2f} s off / {row['round_seconds_on']:.2f} s on, "
              f"{row['attack_seconds_per_job']:.1f} s per job", file=sys.stderr)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
