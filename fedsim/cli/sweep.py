"""`fedleak sweep`."""

from __future__ import annotations

import argparse

from fedsim.errors import UsageError

HELP = "sweep (not implemented yet)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help=HELP, description=HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise UsageError("'sweep' is not implemented yet")
