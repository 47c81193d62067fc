"""`fedleak attack`."""

from __future__ import annotations

import argparse

from fedsim.errors import UsageError

HELP = "attack (not implemented yet)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("attack", help=HELP, description=HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UsageError("'attack' is not implemented yet")
