"""`fedleak simulate`."""

from __future__ import annotations

import argparse

from fedsim.errors import UsageError

HELP = "simulate (not implemented yet)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("simulate", help=HELP, description=HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UsageError("'simulate' is not implemented yet")
