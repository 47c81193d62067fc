"""`fedleak attack`: the curious server's attack on one client's gradient, scored against the client's text."""

from __future__ import annotations

import argparse

from fedsim.harness import format_table, run_job
from fedsim.settings import AttackJob, add_options, from_args

HELP = "reconstruct client text from its gradient (TAG, DLG, ...) and score it"
DESCRIPTION = (HELP + ". The attack sees the model, one batch's FedSGD gradient, the tokenizer and the sequence "
               "lengths; never the text, token ids or labels. Writes OUT/results.jsonl (one line per batch) and "
               "OUT/summary.json, both mode 0600 because they hold the client's text.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("attack", help=HELP, description=DESCRIPTION)
    add_options(parser, AttackJob)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    job = from_args(AttackJob, args)
    records, summary = run_job(job, progress=not args.quiet)
    print(format_table(records, summary))
    print(f"results: {job.out}/results.jsonl  summary: {job.out}/summary.json")
    return 0
