"""[fig3] 2-D PCA of the dummy word embeddings moving toward the true tokens' embeddings during TAG.

The paper's Fig. 3 shows the dummy embeddings travelling to the embeddings of the private tokens. TAG runs with
``snapshot_every`` so the engine keeps the dummy at regular iterations; one PCA is fitted on the true tokens'
embeddings and all snapshots, and each free position's path is drawn from its start to its end next to its true
token. The CSV measures the same motion numerically per snapshot: mean L2 distance and cosine similarity to the
true token's embedding, and the share of positions whose nearest token (the attack's own decoder) is the true one.

    python experiments/fig3_pca.py            # full setting: TinyBERT4, 2 CoLA sentences (wall times: experiments/README.md)
    python experiments/fig3_pca.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from experiments import common
from fedsim.core.plots import pyplot
from fedsim.results import RunDir
from adversary.dummy import Decoder, allowed_tokens
from fedsim.report import markdown_table

NAME = "fig3_pca"
SNAPSHOTS = 20


def motion(prepared, reconstruction, truth) -> dict:
    """Free-position dummies at every snapshot, the true tokens' embeddings, and per-snapshot distances."""
    embedding = prepared.model.get_input_embeddings().weight.detach()
    free = reconstruction.info["free_positions"][0]
    ids = torch.tensor(truth.token_ids[0])[free[: len(truth.token_ids[0])]]
    true = embedding[ids]
    decoder = Decoder(embedding, allowed_tokens(prepared.tokenizer, embedding))
    snaps = [s[0][free] for s in reconstruction.info["dummy_snapshots"]]
    rows = []
    for it, s in zip(reconstruction.info["snapshot_iterations"], snaps):
        rows.append({"iteration": it, "l2_to_true": float((s - true).norm(dim=1).mean()),
                     "cosine_to_true": float(torch.nn.functional.cosine_similarity(s, true, dim=1).mean()),
                     "token_accuracy": float((decoder(s) == ids).float().mean())})
    return {"true": true.numpy(), "snaps": [s.numpy() for s in snaps], "ids": ids.tolist(), "rows": rows,
            "tokens": prepared.tokenizer.convert_ids_to_tokens(ids.tolist())}


def plot(m: dict, path: Path, title: str) -> None:
    """Two PCA panels: the raw embeddings, and the same vectors scaled to unit norm (the attack decodes by cosine,
    so direction is what must converge). Paths start at a circle and end at a cross; stars are the true tokens."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)  # noqa: E731
    for ax, scale, label in ((axes[0], lambda x: x, "word-embedding space"), (axes[1], unit, "unit-normalised")):
        true, snaps = scale(m["true"]), [scale(s) for s in m["snaps"]]
        points = np.concatenate([true, *snaps])
        mean = points.mean(0)
        _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
        proj = lambda x: (x - mean) @ vt[:2].T  # noqa: E731
        true2, paths = proj(true), np.stack([proj(s) for s in snaps])  # (T, k, 2)
        colors = plt.cm.tab20(np.linspace(0, 1, max(1, len(true2))))
        for k in range(len(true2)):
            ax.plot(paths[:, k, 0], paths[:, k, 1], "-", color=colors[k], alpha=0.5, lw=1)
            ax.scatter(*paths[0, k], marker="o", color=colors[k], s=18, alpha=0.6)
            ax.scatter(*paths[-1, k], marker="x", color=colors[k], s=30)
            ax.scatter(*true2[k], marker="*", color=colors[k], s=120, edgecolor="black", linewidth=0.5)
            ax.annotate(m["tokens"][k], true2[k], textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title(f"{title}: {label}", fontsize=10)
    for marker, text in (("o", "dummy at start"), ("x", "dummy at end"), ("*", "true token")):
        axes[0].scatter([], [], marker=marker, color="gray", label=text)
    axes[0].legend(fontsize=8)
    RunDir(path.parent, "experiment").save_figure(path.name, fig, private=True)  # shows the private tokens


def main(argv: list[str] | None = None) -> list[dict]:
    p = common.parser(__doc__, full=common.Scale(2, 500), quick=common.Scale(1, 20))
    args = common.setup(p.parse_args(argv))
    model = "tiny" if args.quick else "tinybert4"
    texts = common.pii_sentences(args.sentences, args.seed) if args.quick else \
        common.glue_sentences("cola", args.sentences, args.data_dir, args.seed, min_words=5, max_words=12)
    every = max(1, args.iterations // SNAPSHOTS)
    cell = common.Cell({"model": model}, texts, common.AttackJob(
        model=model, init="normal:0.02", method="tag", iterations=args.iterations, seed=args.seed,
        attack_options={"snapshot_every": every}))
    motions: list[dict] = []
    attacks = common.run_cells([cell], NAME, args.out,
                               on_attack=lambda labels, prep, rec, truth: motions.append(motion(prep, rec, truth)))
    rows = [{"sentence": i + 1, **r} for i, m in enumerate(motions) for r in m["rows"]]
    common.write_csv(args.out / f"{NAME}.csv", rows, list(rows[0]))
    table = [[i + 1, r["iteration"], r["l2_to_true"], r["cosine_to_true"], r["token_accuracy"]]
             for i, m in enumerate(motions) for k, r in enumerate(m["rows"])
             if k in {0, len(m["rows"]) // 4, len(m["rows"]) // 2, len(m["rows"]) - 1}]
    common.write_markdown(args.out / f"{NAME}.md", f"Fig. 3: dummy embeddings moving toward the true tokens ({model})",
                          [markdown_table(["sentence", "iteration", "mean L2 to true", "mean cosine to true",
                                           "nearest token correct"], table)],
                          [f"Free positions only ([CLS]/[SEP] are fixed). Snapshot every {every} iterations; every "
                           f"snapshot is in {NAME}.csv. ROUGE-1 at the end: "
                           + ", ".join(f"{a['rouge1']:.2f}" for a in attacks) + ".", common.describe_run(args)])
    for i, m in enumerate(motions[:1]):
        plot(m, args.out / f"{NAME}.png", f"TAG on {model}, sentence {i + 1}")
    return rows


if __name__ == "__main__":
    common.run_script(main)
