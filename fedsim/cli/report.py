"""`fedleak report DIR`: a results directory as a Markdown summary."""

from __future__ import annotations

import argparse
from fedsim.core.io import write_private_text
from fedsim.report import render

HELP = "render a results directory (attack, simulate or sweep output) as Markdown"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help=HELP, description=HELP)
    parser.add_argument("directory", help="output directory of fedleak attack, simulate or sweep")
    parser.add_argument("--examples", type=int, default=3, help="reference/reconstruction pairs to show (default: 3; 0 for none)")
    parser.add_argument("--out", default=None, help="also write the Markdown to this file (mode 0600: it may quote private text)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = render(args.directory, examples=max(0, args.examples))
    print(text, end="")
    if args.out:
        write_private_text(args.out, [text.rstrip("\n")])  # may quote private text: 0600
    return 0
