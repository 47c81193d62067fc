"""[fig2] TAG's attack loss (gradient distance) per iteration, one curve per model size.

The paper's Fig. 2 plots how the gradient distance falls during the attack for models of different sizes. Each
model (random init ``normal:0.02``) is attacked on the same few CoLA/SST-2/RTE sentences; the curves are the
engine's per-iteration distance (``Reconstruction.loss_curve``), divided by its value at the first iteration so that
models with differently scaled gradients share one axis (the CSV also keeps the raw values).

    python experiments/fig2_loss_curves.py            # full setting (wall times: experiments/README.md)
    python experiments/fig2_loss_curves.py --quick
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common
from fedsim.core.plots import pyplot
from fedsim.results import RunDir
from fedsim.report import markdown_table

NAME = "fig2_loss_curves"
MODELS = ("transformer", "tinybert4", "tinybert6", "bert-base")
POINTS = 100  # rows per model in the CSV


def curve_rows(curves: dict[str, list[list[float]]]) -> list[dict]:
    """Per model and sampled iteration: mean/std of the raw distance and of the distance relative to iteration 1."""
    rows = []
    for model, runs in curves.items():
        length = min(len(c) for c in runs)
        step = max(1, length // POINTS)
        for i in sorted({*range(0, length, step), length - 1}):
            raw = [c[i] for c in runs]
            rel = [c[i] / c[0] for c in runs if c[0] > 0]
            rows.append({"model": model, "iteration": i + 1, "n": len(runs), "loss_mean": statistics.fmean(raw),
                         "loss_std": statistics.stdev(raw) if len(raw) > 1 else float("nan"),
                         "relative_loss_mean": statistics.fmean(rel) if rel else float("nan"),
                         "relative_loss_std": statistics.stdev(rel) if len(rel) > 1 else float("nan")})
    return rows


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, (ax, ax_raw) = plt.subplots(1, 2, figsize=(11, 4))
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        xs = [r["iteration"] for r in rs]
        ax.plot(xs, [r["relative_loss_mean"] for r in rs], label=f"{model} (n={rs[0]['n']})")
        ax_raw.plot(xs, [r["loss_mean"] for r in rs], label=model)
    for a, label in ((ax, "gradient distance / distance at iteration 1"), (ax_raw, "gradient distance")):
        a.set_yscale("log")
        a.set_xlabel("attack iteration")
        a.set_ylabel(label)
        a.grid(alpha=0.3)
    ax.legend()
    ax.set_title("TAG loss, relative (mean over sentences)")
    ax_raw.set_title("TAG loss, raw")
    RunDir(path.parent, "experiment").save_figure(path.name, fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.parser(__doc__, full=common.Scale(2, 200), quick=common.Scale(1, 20))
    p.add_argument("--models", nargs="+", default=None, help=f"models (default: {' '.join(MODELS)}; quick: tiny)")
    args = common.setup(p.parse_args(argv))
    models = args.models or (["tiny"] if args.quick else list(MODELS))
    texts = common.pii_sentences(args.sentences, args.seed) if args.quick else \
        common.glue_mixture(args.sentences, args.data_dir, args.seed)
    cells = [common.Cell({"model": m}, texts, common.AttackJob(model=m, init="normal:0.02", method="tag",
                                                              iterations=args.iterations, seed=args.seed))
             for m in models]
    curves: dict[str, list[list[float]]] = {}

    def keep_curve(labels: dict, prepared, reconstruction, truth) -> None:
        curves.setdefault(labels["model"], []).append(list(reconstruction.loss_curve))

    attacks = common.run_cells(cells, NAME, args.out, on_attack=keep_curve)
    rows = curve_rows(curves)
    common.write_csv(args.out / f"{NAME}.csv", rows, list(rows[0]))
    final = common.aggregate(attacks, ["model"])
    summary = []
    for e in final:
        rs = [r for r in rows if r["model"] == e["model"]]
        at = lambda frac: rs[min(len(rs) - 1, int(frac * (len(rs) - 1)))]["relative_loss_mean"]  # noqa: E731
        summary.append([e["model"], e["n"], rs[0]["loss_mean"], at(0.1), at(0.5), rs[-1]["relative_loss_mean"],
                        common.pm(e, "rouge1"), common.pm(e, "seconds", 1)])
    common.write_markdown(args.out / f"{NAME}.md", "Fig. 2: TAG attack loss per model", [markdown_table(
        ["model", "n", "distance at it. 1", "relative at 10%", "relative at 50%", "relative at end", "ROUGE-1",
         "s / sentence"], summary)],
        ["Relative = gradient distance divided by its value at iteration 1 (mean over sentences); the full curves "
         f"are in {NAME}.csv and {NAME}.png.", common.describe_run(args)])
    plot(rows, args.out / f"{NAME}.png")
    return rows


if __name__ == "__main__":
    common.run_script(main)
