"""Scoring a reconstruction against the client's private batch: the only code that reads ground truth.

Metrics (per batch; with B > 1 every reference is first paired with one reconstruction by the assignment that
maximises total ROUGE-1 F, and the per-pair scores are averaged over the references):

- ``recover_rate``: TAG's Recover Rate, the maximum over recorded iterations of the share of reference tokens
  (WordPiece ids, special tokens excluded, counted as a multiset) present in the guess. It is an *oracle* metric:
  picking the best iteration needs the ground truth, which a real attacker does not have.
- ``token_accuracy``: share of reference tokens found at the same content position in the final guess.
- ``rouge1``, ``rouge2``, ``rougeL``: F-measures from ``rouge-score`` on the decoded text without special tokens.
- ``label_correct``: share of sequences whose label the attack got right (jointly optimised or fixed labels);
  ``analytic_label_correct``: the same for the analytic recovery from the classifier's gradient (a multiset
  comparison, since that recovery cannot say which sequence has which label), None when it was not possible.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Collection, Sequence

import numpy as np
from rouge_score import rouge_scorer
from scipy.optimize import linear_sum_assignment

from adversary.case import GroundTruth, Reconstruction

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
BERT_SPECIAL_IDS = frozenset({0, 100, 101, 102, 103})  # [PAD] [UNK] [CLS] [SEP] [MASK] in the BERT vocabularies


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge(reference: str, candidate: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure of one candidate against one reference."""
    scores = _scorer().score(reference, candidate)
    return {k: float(scores[k].fmeasure) for k in ROUGE_TYPES}


def content(ids: Sequence[int], special_ids: Collection[int]) -> list[int]:
    return [int(i) for i in ids if int(i) not in special_ids]


def token_overlap(reference: Sequence[int], candidate: Sequence[int]) -> float:
    """Share of the reference's tokens (as a multiset) that the candidate contains."""
    if not reference:
        return float("nan")
    common = Counter(reference) & Counter(candidate)
    return sum(common.values()) / len(reference)


def positional_accuracy(reference: Sequence[int], candidate: Sequence[int]) -> float:
    """Share of reference tokens matched at the same position."""
    if not reference:
        return float("nan")
    return sum(r == c for r, c in zip(reference, candidate)) / len(reference)


def recover_rate(reference: Sequence[int], guesses: Sequence[Sequence[int]]) -> float:
    """Max over guesses (one per recorded iteration) of :func:`token_overlap`. Oracle metric: see module doc."""
    return max((token_overlap(reference, g) for g in guesses), default=0.0)


def assign(references: Sequence[str], candidates: Sequence[str]) -> list[int | None]:
    """For each reference, the index of its reconstruction under the best ROUGE-1 assignment (None if unpaired)."""
    if len(references) == 1 and len(candidates) == 1:
        return [0]
    matrix = np.array([[rouge(r, c)["rouge1"] for c in candidates] for r in references], dtype=float)
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    pairing: list[int | None] = [None] * len(references)
    for r, c in zip(rows, cols):
        pairing[int(r)] = int(c)
    return pairing


def score(reconstruction: Reconstruction, truth: GroundTruth,
          special_ids: Collection[int] | None = None) -> dict:
    """Batch-level metrics (module doc). ``special_ids``: ids left out of token metrics (default: the ids the
    attack recorded in ``info["special_ids"]``, else BERT's)."""
    special = set(special_ids if special_ids is not None else reconstruction.info.get("special_ids", BERT_SPECIAL_IDS))
    pairing = assign(truth.texts, reconstruction.texts)
    per_ref: list[dict[str, float]] = []
    for i, j in enumerate(pairing):
        ref_ids = content(truth.token_ids[i], special)
        if j is None:
            per_ref.append({**dict.fromkeys(ROUGE_TYPES, 0.0), "recover_rate": 0.0, "token_accuracy": 0.0,
                            "label_correct": 0.0})
            continue
        guesses = [content(step[j], special) for step in reconstruction.trajectory if j < len(step)]
        guesses.append(content(reconstruction.token_ids[j], special))
        per_ref.append({
            **rouge(truth.texts[i], reconstruction.texts[j]),
            "recover_rate": recover_rate(ref_ids, guesses),
            "token_accuracy": positional_accuracy(ref_ids, guesses[-1]),
            "label_correct": float(j < len(reconstruction.labels) and reconstruction.labels[j] == truth.labels[i]),
        })
    result = {key: float(np.nanmean([p[key] for p in per_ref])) for key in per_ref[0]}
    analytic = reconstruction.info.get("analytic_labels")
    result["analytic_label_correct"] = None if analytic is None else \
        sum((Counter(analytic) & Counter(truth.labels)).values()) / len(truth.labels)
    result["assignment"] = pairing
    return result
