"""Alias of ``experiments/bench_batch.py`` for `span` on random GLUE sentences (one model, one batch size).

    python experiments/bench_span.py --model tinybert4 --init normal:0.02 --batch-size 1 --sentences 20

is ``bench_batch.py --models tinybert4 --init normal:0.02 --batch-sizes 1 --kinds random --batches 20 --method
span --out experiments/results/bench_span`` (its own default directory, so it never overwrites bench_batch's);
``--budget`` is ``--iterations``; every other option is bench_batch's (``--time-budget``, ``--out``, ``--resume``,
``--public-lengths``...). Kept so that the commands quoted in the README still run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import bench_batch, common  # noqa: E402
from fedsim.core.errors import UsageError  # noqa: E402


def translate(argv: Sequence[str] | None) -> list[str]:
    """bench_span's options as bench_batch's."""
    p = bench_batch.Parser(add_help=False)
    p.add_argument("--model", default="tinybert4")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--sentences", type=int, default=20, help="sentences in all (rounded up to whole batches)")
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--task", default="cola", choices=["cola"])
    p.add_argument("--split", default="dev", choices=["dev"])
    known, rest = p.parse_known_args(argv)
    if known.batch_size <= 0 or known.sentences <= 0:
        raise UsageError(f"--batch-size and --sentences must be positive, got {known.batch_size} and "
                                f"{known.sentences}")
    given = any(a == "--out" or a.startswith("--out=") for a in rest)
    out = [] if given else ["--out", str(common.RESULTS / "bench_span")]
    return ["--models", known.model, "--batch-sizes", str(known.batch_size), "--kinds", "random", "--batches",
            str(-(-known.sentences // known.batch_size)), "--method", "span",
            *(["--iterations", str(known.budget)] if known.budget is not None else []), *out, *rest]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run bench_batch with the translated options."""
    if argv is None:
        argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return bench_batch.main(["--help"])
    return bench_batch.main(translate(argv))


if __name__ == "__main__":
    common.run_script(main)
