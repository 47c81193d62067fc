"""`fedleak simulate`: a federation of Flower clients with an honest-but-curious server that attacks their updates.

With no flags it runs the embedded default: offline `pii` data, 2 clients, TAG on every update, a few minutes on
2 CPU cores. ``add_simulate_options`` and ``settings_from_args`` are reused by ``fedleak sweep``.
"""

from __future__ import annotations

import argparse

from fedsim.cli.options import add_model_options, add_run_options, check_dataset, positive_float, positive_int
from fedsim.settings import MODES, Settings

HELP = "run a federation whose server reconstructs the clients' private text from their updates"
DEFAULTS = Settings()


def add_simulate_options(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, model=DEFAULTS.model, init=DEFAULTS.init)
    parser.set_defaults(max_length=DEFAULTS.max_length)
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=DEFAULTS.dataset, help="cola, sst2, rte or pii (default: pii, offline)")
    g.add_argument("--data-dir", default=None, help="local GLUE directory (CoLA/, SST-2/, RTE/); else FEDLEAK_GLUE_DIR, else the hub")
    g.add_argument("--partition", default=DEFAULTS.partition, help="iid or dirichlet:ALPHA (default: iid)")
    g.add_argument("--eval-examples", type=positive_int, default=None, help="evaluate on the first N dev examples (default: all)")

    g = parser.add_argument_group("federation")
    g.add_argument("--clients", type=positive_int, default=DEFAULTS.clients, help=f"(default: {DEFAULTS.clients})")
    g.add_argument("--rounds", type=positive_int, default=DEFAULTS.rounds, help=f"(default: {DEFAULTS.rounds})")
    g.add_argument("--mode", choices=MODES, default=DEFAULTS.mode,
                   help="fedsgd: one step on one batch, the server recovers its gradient exactly; fedavg: "
                        "--local-steps steps, the server sees their averaged gradient (default: fedsgd)")
    g.add_argument("--batch-size", type=positive_int, default=DEFAULTS.batch_size, help=f"examples per step (default: {DEFAULTS.batch_size})")
    g.add_argument("--local-steps", type=positive_int, default=DEFAULTS.local_steps, help="E, fedavg only (default: 1)")
    g.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help=f"client SGD learning rate (default: {DEFAULTS.lr:g})")

    g = parser.add_argument_group("curious server")
    g.add_argument("--attack", default=DEFAULTS.attack, metavar="METHOD",
                   help=f"none, dlg, tag, span, lamp or best (default: {DEFAULTS.attack}; none runs no attack code)")
    g.add_argument("--attack-iterations", type=positive_int, default=DEFAULTS.attack_iterations,
                   help=f"(default: {DEFAULTS.attack_iterations})")
    g.add_argument("--attack-clients", default=DEFAULTS.attack_clients, help="all, or K clients per round (default: all)")
    g.add_argument("--attack-backend", choices=("ray", "inline"), default=DEFAULTS.attack_backend,
                   help="ray: a Ray actor beside the federation, rounds do not wait for it; inline: in the server, "
                        "blocking (default: ray)")
    g.add_argument("--attack-gpus", default=DEFAULTS.attack_gpus, help="GPUs for the attack actor: auto (1 if CUDA is visible), 0 or 1 (default: auto)")
    g.add_argument("--attack-threads", type=int, default=DEFAULTS.attack_threads, help="torch threads for the attack; 0 = all cores but one (default: 0)")
    g.add_argument("--attack-timeout", type=positive_float, default=DEFAULTS.attack_timeout,
                   help=f"seconds to wait for unfinished attacks after the last round (default: {DEFAULTS.attack_timeout:g})")

    g = parser.add_argument_group("client-side defense")
    g.add_argument("--defense", action="append", default=[], metavar="SPEC",
                   help="noise:sigma=S, clip:c=C, dp:sigma=S,c=C or prune:p=P, applied on the client before the "
                        "update leaves it (repeatable: applied in order; default: none)")

    add_run_options(parser, out=DEFAULTS.out)
    parser.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validated Settings (UsageError on bad values: one line, exit 2)."""
    import numpy as np

    from fedsim.core.data import partition
    from fedsim.core.errors import UsageError
    from fedsim.core.models import parse_init

    partition(np.zeros(2, dtype=int), 1, args.partition)  # a bad spec fails here, not inside a Ray worker
    parse_init(args.init)
    if str(args.attack_gpus).lower() != "auto":
        try:
            if float(args.attack_gpus) < 0:
                raise ValueError
        except ValueError:
            raise UsageError(f"--attack-gpus must be auto or a number >= 0, got {args.attack_gpus!r}") from None
    return Settings(model=args.model, init=args.init, vocab=args.vocab, max_length=args.max_length,
                    dataset=check_dataset(args.dataset), data_dir=args.data_dir or "", clients=args.clients,
                    rounds=args.rounds, mode=args.mode, batch_size=args.batch_size, local_steps=args.local_steps,
                    lr=args.lr, partition=args.partition, attack=args.attack, attack_iterations=args.attack_iterations,
                    attack_clients=str(args.attack_clients), attack_backend=args.attack_backend,
                    attack_gpus=str(args.attack_gpus), attack_threads=max(0, args.attack_threads),
                    attack_timeout=args.attack_timeout, eval_examples=args.eval_examples or 0, seed=args.seed,
                    defense=[d for d in args.defense if d.strip() and d.strip() != "none"],
                    out=args.out)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("simulate", help=HELP, description=HELP + ". With no flags: the embedded offline demo.")
    add_simulate_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_inputs(settings)
    from fedsim import simulate

    summary = simulate.run(settings, verbose=args.verbose)
    return 0 if summary.get("status") == "completed" else 1


def check_inputs(s: Settings) -> None:
    """Fail fast, in the terminal, on what would otherwise fail inside a Ray worker: model, data, shard sizes."""
    from pathlib import Path

    from fedsim import task
    from fedsim.core.errors import UsageError

    if Path(s.out).exists() and not Path(s.out).is_dir():
        raise UsageError(f"--out {s.out!r} is a file; give a directory")
    train = task.load_split(s.dataset, "train", s.data_dir, s.seed)
    task.load_split(s.dataset, "dev", s.data_dir, s.seed)
    task.initial_model(s, train.num_labels)
    if s.clients > len(train):
        raise UsageError(f"cannot split {len(train)} examples across {s.clients} clients")
    task.client_shard(s.dataset, s.data_dir, s.partition, s.clients, 0, s.seed)
