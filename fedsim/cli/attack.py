"""`fedleak attack`: the curious server's attack on one client's gradient, scored against the client's text."""

from __future__ import annotations

import argparse

from fedsim.cli.options import add_data_options, add_model_options, add_run_options, check_dataset, positive_int
from fedsim.core.errors import UsageError

HELP = "reconstruct client text from its gradient (TAG, DLG, ...) and score it"
DESCRIPTION = (HELP + ". The attack sees the model, one batch's FedSGD gradient, the tokenizer and the sequence "
               "lengths; never the text, token ids or labels. Writes OUT/results.jsonl (one line per batch) and "
               "OUT/summary.json, both mode 0600 because they hold the client's text.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("attack", help=HELP, description=DESCRIPTION)
    add_model_options(parser)
    add_data_options(parser, dataset="pii", split="train")
    g = parser.add_argument_group("attack")
    g.add_argument("--text-file", default=None,
                   help="attack these sentences (one per line) instead of --dataset; labels drawn from --seed")
    g.add_argument("--num-samples", type=positive_int, default=None,
                   help="examples to attack: the first N (default: all lines of --text-file, or 10 examples)")
    g.add_argument("--batch-size", type=positive_int, default=1, help="sentences per client gradient (default: 1)")
    g.add_argument("--method", default="tag", help="dlg, tag, or another registered attack (default: tag)")
    g.add_argument("--iterations", type=positive_int, default=1000, help="optimisation steps (default: 1000)")
    g.add_argument("--defense", action="append", default=[], metavar="SPEC",
                   help="client-side defense applied to the gradient before the server sees it (repeatable)")
    g.add_argument("--private-lengths", action="store_true",
                   help="do not give the attacker the sequence lengths: it reads them from the gradient")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_run_options(parser, out="runs/attack")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedsim.harness import AttackJob, format_table, run_job

    if args.text_file is None:
        args.dataset = check_dataset(args.dataset)
    if args.text_file is not None and not args.text_file.strip():
        raise UsageError("empty --text-file path")
    job = AttackJob(model=args.model, init=args.init, dataset=args.dataset, split=args.split, data_dir=args.data_dir,
                    text_file=args.text_file, num_samples=args.num_samples, batch_size=args.batch_size,
                    method=args.method, iterations=args.iterations, seed=args.seed, out=args.out, vocab=args.vocab,
                    max_length=args.max_length, defenses=tuple(args.defense),
                    public_lengths=not args.private_lengths)
    records, summary = run_job(job, progress=not args.quiet)
    print(format_table(records, summary))
    print(f"results: {args.out}/results.jsonl  summary: {args.out}/summary.json")
    return 0
