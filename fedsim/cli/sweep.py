"""`fedleak sweep`: the `simulate` options plus several `--defense` settings, attacks and seeds, one run each."""

from __future__ import annotations

import argparse

from fedsim.cli.simulate import check_inputs
from fedsim.settings import Settings, add_options, from_args, positive_int

HELP = "one federation per (defense, attack, seed): leakage against accuracy and epsilon, and the verdict"
DEFAULT_DEFENSES = ["none", "noise:sigma=0.01", "noise:sigma=0.1"]
DEFAULT_ATTACKS = ["best"]  # the worst case: a real adversary runs every attack it has


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help=HELP, description=HELP + ". Writes tradeoff.csv (one row per setting), "
                            "runs.csv (one per run), verdict.json, frontier.png and a sub-directory per run; the "
                            "verdict is printed last.")
    add_options(parser, Settings, skip=("defense", "attack"), defaults={"out": "runs/sweep"})
    g = parser.add_argument_group("sweep")
    g.add_argument("--defense", action="append", default=None, metavar="SPEC",
                   help="a defense setting to run (repeatable; each is a separate run; 'none' allowed; compose within "
                        "one setting with '+', e.g. clip:c=1+noise:sigma=0.1). Default: " + ", ".join(DEFAULT_DEFENSES))
    g.add_argument("--attack", action="append", default=None, metavar="METHOD",
                   help="attack every setting is scored against (repeatable; default: best, the worst case)")
    g.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="run each setting with N seeds: --seed, --seed + 1, ... (default: 1); accuracy is reported "
                        "as mean ± sd over them, leakage over every attacked update of every seed")
    g.add_argument("--resume", action="store_true",
                   help="keep the runs OUT already holds for the same settings (completed ones); run the rest")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedsim.report_html import sweep_command
    from fedsim.sweep import sweep  # runs federations: the Flower simulation and Ray load only here

    defenses = args.defense or DEFAULT_DEFENSES
    attacks = args.attack or DEFAULT_ATTACKS
    base = from_args(Settings, args, attack=attacks[0], defense=[])  # each run sets its own defense and attack
    for attack in attacks[1:]:
        from_args(Settings, args, attack=attack, defense=[])  # every attack name checked up front
    check_inputs(base)
    shared = {k: v for k, v in base.to_run_config().items() if k not in ("defense", "attack", "out")}
    command = sweep_command(shared, defenses, attacks, args.seeds, args.out) + (" --resume" if args.resume else "")
    sweep(base, defenses, attacks, args.out, resume=args.resume, seeds=args.seeds, command=command)
    return 0
