"""[table6] Input length: RTE sentences longer than 50 words against CoLA sentences shorter than 10 words.

The paper's Table VI: TAG recovers more of short inputs. Long = RTE dev first sentences of 51-65 words (capped at
65 so that one attack stays affordable; 61-100 WordPiece tokens), short = CoLA dev sentences of at most 9 words.
TinyBERT4 at ``normal:0.02``, inputs up to 160 tokens (nothing is truncated).

    python experiments/table6_length.py            # full setting (wall times: experiments/README.md)
    python experiments/table6_length.py --quick    # pii sentences: the first 6 words vs three sentences joined
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common
from experiments.paper import paper_note

NAME = "table6_length"


def quick_texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Short and long inputs written from the built-in sentences (no GLUE needed)."""
    base = common.pii_sentences(3 * n, seed)
    return [" ".join(s.split()[:6]) for s in base[:n]], [" ".join(base[i:i + 3]) for i in range(0, 3 * n, 3)]


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.parser(__doc__, full=common.Scale(5, 300), quick=common.Scale(1, 10))
    p.add_argument("--short-sentences", type=int, default=None, help="short sentences (default: 2x --sentences)")
    args = common.setup(p.parse_args(argv))
    n_short = args.short_sentences or 2 * args.sentences
    model = "tiny" if args.quick else "tinybert4"
    if args.quick:
        short, long = quick_texts(args.sentences, args.seed)
    else:
        long = common.glue_sentences("rte", args.sentences, args.data_dir, args.seed, min_words=51, max_words=65)
        short = common.glue_sentences("cola", n_short, args.data_dir, args.seed, max_words=9)
    cells = [common.Cell({"input": label}, texts, common.AttackJob(model=model, init="normal:0.02", method="tag",
                                                                  iterations=args.iterations, seed=args.seed,
                                                                  max_length=160))
             for label, texts in (("CoLA < 10 words", short), ("RTE > 50 words", long))]

    def write(rows: list[dict]) -> None:
        common.write_table(args.out, NAME, common.aggregate(rows, ["input"]), ["input"],
                           f"Table VI: TAG against input length ({model})",
                           [common.METRIC_NOTE, "tokens = WordPiece tokens without [CLS]/[SEP].",
                            paper_note("Table VI"), common.describe_run(args, f", model {model}")])

    return common.run_cells(cells, NAME, args.out, checkpoint=write, resume=args.resume)


if __name__ == "__main__":
    common.run_script(main)
