"""`fedleak report DIR`: a results directory as a Markdown summary."""

from __future__ import annotations

import argparse
from fedsim.report import render
from fedsim.report_html import MAX_EXAMPLES, write_report
from fedsim.results import write_private_report

HELP = "render a results directory (attack, simulate, sweep or experiment output) as Markdown"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help=HELP, description=HELP)
    parser.add_argument("directory", help="output directory of fedleak attack, simulate or sweep, or of the "
                        "experiment scripts (its summary.json states which)")
    parser.add_argument("--examples", type=int, default=3, help="reference/reconstruction pairs to show (default: 3; 0 for none)")
    parser.add_argument("--out", default=None, help="also write the Markdown to this file (mode 0600: it may quote private text)")
    parser.add_argument("--html", action="store_true",
                        help="write DIR/report.html (or --out): one self-contained page with each private text beside "
                             "its reconstruction, the plots, accuracy, epsilon and the command (mode 0600)")
    parser.add_argument("--max-examples", type=int, default=MAX_EXAMPLES,
                        help=f"--html: updates whose text the page shows, most leaking first (default: {MAX_EXAMPLES})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.html:
        path = write_report(args.directory, args.out, max_examples=max(0, args.max_examples))
        print(f"wrote {path} (mode 0600: it holds private text)")
        return 0
    text = render(args.directory, examples=max(0, args.examples))
    print(text, end="")
    if args.out:
        write_private_report(args.out, text)  # may quote private text: 0600
    return 0
