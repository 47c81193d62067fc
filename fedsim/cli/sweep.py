"""`fedleak sweep`: the `simulate` options plus several `--defense` settings and attacks, one run per pair."""

from __future__ import annotations

import argparse

from fedsim.cli.simulate import add_simulate_options, check_inputs, settings_from_args

HELP = "one federation per (defense, attack) setting: leakage against accuracy and epsilon"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help=HELP, description=HELP + ". Writes tradeoff.csv, tradeoff.png and a "
                            "sub-directory per run.", conflict_handler="resolve")
    add_simulate_options(parser)
    parser.add_argument("--defense", action="append", default=None, metavar="SPEC",
                        help="a defense setting to run (repeatable; each is a separate run; 'none' allowed; "
                             "compose within one setting with '+', e.g. clip:c=1+noise:sigma=0.1). "
                             "Default: none and noise:sigma=0.01,0.1")
    parser.add_argument("--attack", action="append", default=None, metavar="METHOD",
                        help="attack every setting is scored against (repeatable; default: tag)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs OUT already holds for the same settings (completed ones); run the rest")
    parser.set_defaults(func=run, out="runs/sweep")


def run(args: argparse.Namespace) -> int:
    from fedsim.sweep import sweep

    defenses = args.defense or ["none", "noise:sigma=0.01", "noise:sigma=0.1"]
    attacks = args.attack or ["tag"]
    args.attack = attacks[0]  # the base settings are validated with one attack; each run sets its own
    args.defense = []  # likewise: every run sets its own defense
    base = settings_from_args(args)
    for attack in attacks:
        settings_from_args(argparse.Namespace(**{**vars(args), "attack": attack}))  # every attack name checked up front
    check_inputs(base)
    rows = sweep(base, defenses, attacks, args.out, resume=args.resume)
    print(f"\nwrote {args.out}/tradeoff.csv and tradeoff.png ({len(rows)} runs); `fedleak report {args.out}` shows the table")
    return 0
