"""[fig5] TAG against DLG on the same sentences: the ratio TAG / DLG per metric, and two qualitative examples.

The paper's Fig. 5 reports TAG's gain over DLG (1.5x Recover Rate and 2.5x ROUGE-2 in its abstract) and its
Table III shows reconstructions side by side. Both attacks use the library's defaults (TAG: L2 + weighted L1,
BertAdam lr 0.05, dummy at the embeddings' scale; DLG: L2, L-BFGS, standard-normal dummy) on TinyBERT4 with
``normal:0.02`` weights and the same CoLA/SST-2/RTE mixture, the same iteration count and the same seeds.

    python experiments/fig5_tag_vs_dlg.py            # full setting (wall times: experiments/README.md)
    python experiments/fig5_tag_vs_dlg.py --quick
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common
from experiments.paper import paper_note
from fedsim.core.plots import pyplot
from fedsim.results import RunDir
from fedsim.report import markdown_table

NAME = "fig5_tag_vs_dlg"
METHODS = ("tag", "dlg")


def ratios(stats: list[dict]) -> dict[str, float]:
    """TAG mean / DLG mean per metric (inf where DLG scored 0 and TAG did not)."""
    by = {e["method"]: e for e in stats}
    out = {}
    for m in common.METRICS:
        tag, dlg = by["tag"][f"{m}_mean"], by["dlg"][f"{m}_mean"]
        out[m] = tag / dlg if dlg > 0 else (math.inf if tag > 0 else float("nan"))
    return out


def examples(rows: list[dict]) -> list[list]:
    """Two sentences as in the paper's Table III: the one where TAG did best and the one at TAG's median ROUGE-L."""
    tag = sorted((r for r in rows if r["method"] == "tag"), key=lambda r: -r["rougeL"])
    picks = [tag[0], tag[len(tag) // 2]] if len(tag) > 1 else tag[:1]
    dlg = {r["reference"][0]: r for r in rows if r["method"] == "dlg"}
    table = []
    for label, r in zip(("best TAG ROUGE-L", "median TAG ROUGE-L"), picks):
        d = dlg.get(r["reference"][0])
        table.append([label, r["reference"][0], r["reconstruction"][0], f"{r['rougeL']:.2f}",
                      d["reconstruction"][0] if d else "", f"{d['rougeL']:.2f}" if d else ""])
    return table


def plot(stats: list[dict], ratio: dict[str, float], path: Path) -> None:
    plt = pyplot()
    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(11, 4))
    by = {e["method"]: e for e in stats}
    xs = range(len(common.METRICS))
    for k, method in enumerate(METHODS):
        e = by[method]
        ax.bar([x + (k - 0.5) * 0.38 for x in xs], [e[f"{m}_mean"] for m in common.METRICS], 0.38,
               yerr=[0 if math.isnan(e[f"{m}_ci95"]) else e[f"{m}_ci95"] for m in common.METRICS], capsize=3,
               label=f"{method.upper()} (n={e['n']})")
    ax.set_xticks(list(xs), [common.LABELS[m] for m in common.METRICS])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean over sentences (95% CI)")
    ax.legend()
    ax.set_title("TAG and DLG on the same sentences")
    finite = [ratio[m] if math.isfinite(ratio[m]) else 0.0 for m in common.METRICS]
    bars = ax_r.bar(list(xs), finite, color="tab:green")
    for bar, m in zip(bars, common.METRICS):
        ax_r.annotate("inf" if math.isinf(ratio[m]) else f"{ratio[m]:.2f}x", (bar.get_x() + bar.get_width() / 2,
                      bar.get_height()), ha="center", va="bottom")
    ax_r.axhline(1.0, color="gray", lw=1, ls="--")
    ax_r.set_xticks(list(xs), [common.LABELS[m] for m in common.METRICS])
    ax_r.set_ylabel("TAG / DLG")
    ax_r.set_title("ratio of means")
    RunDir(path.parent, "experiment").save_figure(path.name, fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.parser(__doc__, full=common.Scale(10, 300), quick=common.Scale(2, 15))
    args = common.setup(p.parse_args(argv))
    model = "tiny" if args.quick else "tinybert4"
    texts = common.pii_sentences(args.sentences, args.seed) if args.quick else \
        common.glue_mixture(args.sentences, args.data_dir, args.seed)
    cells = [common.Cell({"method": m}, texts, common.AttackJob(model=model, init="normal:0.02", method=m,
                                                               iterations=args.iterations, seed=args.seed))
             for m in METHODS]
    rows = common.run_cells(cells, NAME, args.out, resume=args.resume)
    stats = common.aggregate(rows, ["method"])
    ratio = ratios(stats)
    stats.append({"method": "tag/dlg", "n": min(e["n"] for e in stats),
                  **{f"{m}_mean": ratio[m] for m in common.METRICS}})
    # per-sentence ratio spread: how consistent TAG's gain is, not only its mean
    dlg = {r["reference"][0]: r for r in rows if r["method"] == "dlg"}
    pairs = [(r, dlg[r["reference"][0]]) for r in rows if r["method"] == "tag" and r["reference"][0] in dlg]
    paired = {m: [t[m] - d[m] for t, d in pairs] for m in common.METRICS}
    diff = [f"{common.LABELS[m]} {statistics.fmean(v):+.3f} (TAG better on {sum(x > 0 for x in v)}/{len(v)}, "
            f"worse on {sum(x < 0 for x in v)})" for m, v in paired.items()]
    common.write_table(args.out, NAME, stats, ["method"], f"Fig. 5: TAG vs DLG ({model}, normal:0.02)",
                       [common.METRIC_NOTE, "The tag/dlg row is the ratio of the two means.",
                        "Paired differences TAG - DLG per sentence: " + "; ".join(diff) + ".",
                        paper_note("Fig. 5"), common.describe_run(args, f", model {model}")])
    plot(stats[:-1], ratio, args.out / f"{NAME}.png")
    RunDir(args.out, "experiment").write_text(f"{NAME}_examples.md", "\n".join([  # reconstructed text: 0600
        f"# Table III analogue: TAG and DLG reconstructions ({model}, {args.iterations} iterations)", "",
        markdown_table(["example", "reference", "TAG", "TAG R-L", "DLG", "DLG R-L"], examples(rows))]) + "\n")
    return rows


if __name__ == "__main__":
    common.run_script(main)
