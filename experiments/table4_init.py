"""[table4] Weight initialisation: TAG on models drawn from N(0, s^2) and U(-s, s) for s = 0.01, 0.02, 0.03.

The paper's Table IV asks how the distribution the model's weights come from changes what TAG recovers. The same
TinyBERT4 architecture is initialised six ways (BERT's scheme with the weight distribution swapped: biases 0,
LayerNorm 1/0) and attacked on the same CoLA/SST-2/RTE mixture. TAG's dummy starts at the scale of each model's own
word embeddings, so the comparison is about the gradient landscape, not a mismatched start.

    python experiments/table4_init.py            # full setting (wall times: experiments/README.md)
    python experiments/table4_init.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common
from experiments.paper import paper_note

NAME = "table4_init"
INITS = ("normal:0.01", "normal:0.02", "normal:0.03", "uniform:0.01", "uniform:0.02", "uniform:0.03")


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.parser(__doc__, full=common.Scale(6, 300), quick=common.Scale(1, 10))
    args = common.setup(p.parse_args(argv))
    model = "tiny" if args.quick else "tinybert4"
    texts = common.pii_sentences(args.sentences, args.seed) if args.quick else \
        common.glue_mixture(args.sentences, args.data_dir, args.seed)
    cells = [common.Cell({"init": init}, texts, common.AttackJob(model=model, init=init, method="tag",
                                                                iterations=args.iterations, seed=args.seed))
             for init in INITS]

    def write(rows: list[dict]) -> None:
        common.write_table(args.out, NAME, common.aggregate(rows, ["init"]), ["init"],
                           f"Table IV: TAG against the weight initialisation ({model})",
                           [common.METRIC_NOTE, "Data: interleaved CoLA / SST-2 / RTE dev sentences (3-30 words), "
                            "the same sentences and seeds in every row.", paper_note("Table IV"), common.describe_run(args, f", model {model}")])

    return common.run_cells(cells, NAME, args.out, checkpoint=write, resume=args.resume)


if __name__ == "__main__":
    common.run_script(main)
