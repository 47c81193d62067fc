"""[table2] Model size: TAG on Transformer, TinyBERT4, TinyBERT6 and BERT-base (random init), CoLA/SST-2/RTE mixture.

The paper's Table II: the larger the model, the more of the sentence TAG recovers. Every model is attacked on the
same sentences (an interleaved mixture of CoLA, SST-2 and RTE dev sentences of 3-30 words, RTE's first sentence);
the big models are attacked on the first few of them only (``--big-sentences``), since one TAG iteration on
BERT-base costs ~10x one on TinyBERT4. Weights are drawn from N(0, 0.02^2) (``normal:0.02``).

    python experiments/table2_model_size.py            # full setting (wall times: experiments/README.md)
    python experiments/table2_model_size.py --quick    # tiny model, pii sentences, seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common
from experiments.paper import paper_note

NAME = "table2_model_size"
MODELS = ("transformer", "tinybert4", "tinybert6", "bert-base")
BIG = ("tinybert6", "bert-base", "bert-large")


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.parser(__doc__, full=common.Scale(20, 300), quick=common.Scale(2, 15))
    p.add_argument("--models", nargs="+", default=None, help=f"models (default: {' '.join(MODELS)}; quick: tiny)")
    p.add_argument("--big-sentences", type=int, default=3,
                   help="sentences for tinybert6/bert-base/bert-large (default: 3)")
    args = common.setup(p.parse_args(argv))
    models = args.models or (["tiny"] if args.quick else list(MODELS))
    texts = common.pii_sentences(args.sentences, args.seed) if args.quick else \
        common.glue_mixture(args.sentences, args.data_dir, args.seed)
    cells = [common.Cell({"model": m}, texts[: min(args.big_sentences, len(texts))] if m in BIG else texts,
                         common.AttackJob(model=m, init="normal:0.02", method="tag", iterations=args.iterations,
                                          seed=args.seed))
             for m in models]

    def write(rows: list[dict]) -> None:
        common.write_table(args.out, NAME, common.aggregate(rows, ["model"]),
                           ["model"], "Table II: TAG against model size (random init normal:0.02)",
                           [common.METRIC_NOTE,
                            "Data: interleaved CoLA / SST-2 / RTE dev sentences (3-30 words); the big models are "
                            "attacked on the first sentences of the same list (n column).",
                            paper_note("Table II"), common.describe_run(args)])

    return common.run_cells(cells, NAME, args.out, checkpoint=write, resume=args.resume)


if __name__ == "__main__":
    common.run_script(main)
