"""[table7] Vocabulary size: TAG with the 21,128-token Chinese BERT vocabulary against the 30,522-token English one.

The paper's Table VII: a smaller dictionary makes TAG stronger (fewer candidates per position). The same
TinyBERT4 architecture (its word-embedding matrix sized to the vocabulary) attacks the same lower-cased CoLA/SST-2/RTE
sentences tokenised with bert-base-uncased (30,522) or bert-base-chinese (21,128, ``../shared/vocab``). Caveat: the
Chinese vocabulary splits English words into more pieces (about 1.6x as many tokens), so length changes with it;
the tokens column shows by how much.

    python experiments/table7_vocab.py            # full setting (wall times: experiments/README.md)
    python experiments/table7_vocab.py --quick    # bert-base-uncased vs a small vocabulary the script writes
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common
from fedsim.core.text import load_tokenizer
from experiments.paper import paper_note
from fedsim.core.errors import UsageError

NAME = "table7_vocab"
SPECIAL = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def small_vocab(path: Path, texts: list[str]) -> Path:
    """A WordPiece vocabulary made of the texts' words, digits and BERT's special tokens at their usual ids."""
    words = sorted({w for t in texts for w in t.replace(".", " .").replace(",", " ,").split()})
    pieces = [*"0123456789", *(f"##{d}" for d in "0123456789"), ".", ","]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(dict.fromkeys(SPECIAL + pieces + words)) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.parser(__doc__, full=common.Scale(8, 300), quick=common.Scale(1, 10))
    p.add_argument("--second-vocab", default=str(common.CHINESE_VOCAB), help="the other vocab.txt (full runs)")
    args = common.setup(p.parse_args(argv))

    model = "tiny" if args.quick else "tinybert4"
    if args.quick:
        texts = common.pii_sentences(args.sentences, args.seed)
        second = small_vocab(args.out / "raw" / "quick-vocab.txt", common.pii_sentences(200, args.seed))
    else:
        texts = [t.lower() for t in common.glue_mixture(args.sentences, args.data_dir, args.seed)]
        second = Path(args.second_vocab)
        if not second.is_file():
            raise UsageError(f"second vocabulary {second} not found (pass --second-vocab FILE)")
    vocabs = [("bert-base-uncased", "bert-base-uncased"), (second.stem, str(second))]
    cells = [common.Cell({"vocab": name, "vocab_size": len(load_tokenizer(v))}, texts,
                         common.AttackJob(model=model, init="normal:0.02", method="tag", vocab=v,
                                          iterations=args.iterations, seed=args.seed, max_length=128))
             for name, v in vocabs]

    def write(rows: list[dict]) -> None:
        common.write_table(args.out, NAME, common.aggregate(rows, ["vocab", "vocab_size"]), ["vocab", "vocab_size"],
                           f"Table VII: TAG against vocabulary size ({model})",
                           [common.METRIC_NOTE, "Same lower-cased sentences in both rows; tokens = WordPiece "
                            "tokens per sentence under that vocabulary.", paper_note("Table VII"), common.describe_run(args, f", model {model}")])

    return common.run_cells(cells, NAME, args.out, checkpoint=write, resume=args.resume)


if __name__ == "__main__":
    common.run_script(main)
