"""`fedleak sweep`: the `simulate` options plus several `--defense` settings and attacks, one run per pair."""

from __future__ import annotations

import argparse

from fedsim.cli.simulate import check_inputs
from fedsim.settings import Settings, add_options, from_args

HELP = "one federation per (defense, attack) setting: leakage against accuracy and epsilon"
DEFAULT_DEFENSES = ["none", "noise:sigma=0.01", "noise:sigma=0.1"]
DEFAULT_ATTACKS = ["tag"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help=HELP, description=HELP + ". Writes tradeoff.csv, tradeoff.png and a "
                            "sub-directory per run.")
    add_options(parser, Settings, skip=("defense", "attack"))
    g = parser.add_argument_group("sweep")
    g.add_argument("--defense", action="append", default=None, metavar="SPEC",
                   help="a defense setting to run (repeatable; each is a separate run; 'none' allowed; compose within "
                        "one setting with '+', e.g. clip:c=1+noise:sigma=0.1). Default: " + ", ".join(DEFAULT_DEFENSES))
    g.add_argument("--attack", action="append", default=None, metavar="METHOD",
                   help="attack every setting is scored against (repeatable; default: tag)")
    g.add_argument("--resume", action="store_true",
                   help="keep the runs OUT already holds for the same settings (completed ones); run the rest")
    parser.set_defaults(func=run, out="runs/sweep")


def run(args: argparse.Namespace) -> int:
    from fedsim.sweep import sweep  # runs federations: the Flower simulation and Ray load only here

    defenses = args.defense or DEFAULT_DEFENSES
    attacks = args.attack or DEFAULT_ATTACKS
    base = from_args(Settings, args, attack=attacks[0], defense=[])  # each run sets its own defense and attack
    for attack in attacks[1:]:
        from_args(Settings, args, attack=attack, defense=[])  # every attack name checked up front
    check_inputs(base)
    rows = sweep(base, defenses, attacks, args.out, resume=args.resume)
    print(f"\nwrote {args.out}/tradeoff.csv and tradeoff.png ({len(rows)} runs); `fedleak report {args.out}` shows the table")
    return 0
