"""`fedleak simulate`: a federation of Flower clients with an honest-but-curious server that attacks their updates.

With no flags it runs the embedded default: offline `pii` data, 2 clients, TAG on every update, a few minutes on
2 CPU cores. Every option comes from ``fedsim.settings.Settings``; ``check_inputs`` is reused by ``fedleak sweep``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedsim import task
from fedsim.core.errors import UsageError
from fedsim.settings import Settings, add_options, from_args

HELP = "run a federation whose server reconstructs the clients' private text from their updates"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("simulate", help=HELP, description=HELP + ". With no flags: the embedded offline demo.")
    add_options(parser, Settings)
    parser.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedsim import simulate  # the Flower simulation and Ray: loaded only by the commands that run a federation

    settings = from_args(Settings, args)
    check_inputs(settings)
    summary = simulate.run(settings, verbose=args.verbose)
    return 0 if summary.get("status") == "completed" else 1


def check_inputs(s: Settings) -> None:
    """Fail fast, in the terminal, on what would otherwise fail inside a Ray worker: model, data, shard sizes."""
    if Path(s.out).exists() and not Path(s.out).is_dir():
        raise UsageError(f"--out {s.out!r} is a file; give a directory")
    train = task.load_split(s.dataset, "train", s.data_dir, s.seed)
    task.load_split(s.dataset, "dev", s.data_dir, s.seed)
    task.initial_model(s, train.num_labels)
    if s.clients > len(train):
        raise UsageError(f"cannot split {len(train)} examples across {s.clients} clients")
    task.client_shard(s.dataset, s.data_dir, s.partition, s.clients, 0, s.seed)
