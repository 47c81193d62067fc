"""Scoring a reconstruction against the client's private batch: the only code that reads ground truth.

Metrics (per batch; with B > 1 every reference is first paired with one reconstruction by the assignment that
maximises total ROUGE-1 F, and the per-pair scores are averaged over the references):

- ``recover_rate``: TAG's Recover Rate, the maximum over recorded iterations of the share of reference tokens
  (WordPiece ids, special tokens excluded, counted as a multiset) present in the guess. It is an *oracle* metric:
  picking the best iteration needs the ground truth, which a real attacker does not have.
- ``token_accuracy``: share of reference tokens found at the same content position in the final guess.
- ``rouge1``, ``rouge2``, ``rougeL``: F-measures from ``rouge-score`` on the decoded text without special tokens.
- ``label_correct``: share of sequences whose label the attack got right (jointly optimised or fixed labels),
  counted only over references paired with a reconstruction of positive ROUGE-1 (None when there is none);
  ``analytic_label_correct``: the same for the analytic recovery from the classifier's gradient (a multiset
  comparison, since that recovery cannot say which sequence has which label), None when it was not possible.

Added (issue #11), because the ones above flatter a long guess or a lucky pairing:

- ``token_precision``: share of the final guess's tokens (multiset, special tokens excluded) that are in the
  reference; ``token_f1``: harmonic mean of it and the final guess's recall. Unlike Recover Rate they fall when
  a guess pads the right words with junk (a 400-token guess against a 12-token sentence).
- ``rouge1_random_pairing``: the mean ROUGE-1 F over uniform random one-to-one pairings of references and
  reconstructions (exactly the mean of the full ROUGE-1 matrix), beside ``rouge1``'s best pairing (B = 1: equal).
- ``certified_share``: share of sequences the attack certified (the reproduction test; not a comparison with the truth).

Special-token ids come from the caller, which holds the tokenizer (``tokenizer.all_special_ids``), never from the
attack's ``info``.
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


def token_precision(reference: Sequence[int], candidate: Sequence[int]) -> float:
    """Share of the candidate's tokens (as a multiset) that the reference contains (0 for an empty candidate)."""
    if not candidate:
        return 0.0
    common = Counter(reference) & Counter(candidate)
    return sum(common.values()) / len(candidate)


def token_f1(reference: Sequence[int], candidate: Sequence[int]) -> float:
    """F1 of the multiset overlap: recall over the reference, precision over the candidate."""
    recall, precision = token_overlap(reference, candidate), token_precision(reference, candidate)
    if not reference or recall + precision == 0:
        return 0.0
    return 2 * recall * precision / (recall + precision)


def rouge_matrices(references: Sequence[str], candidates: Sequence[str]) -> dict[str, np.ndarray]:
    """ROUGE-1/2/L F of every reference (rows) against every reconstruction (columns), one matrix per type."""
    pairs = [[rouge(r, c) for c in candidates] for r in references]
    return {k: np.array([[p[k] for p in row] for row in pairs], dtype=float).reshape(len(references),
                                                                                  len(candidates))
            for k in ROUGE_TYPES}


def rouge1_matrix(references: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
    """ROUGE-1 F of every reference (rows) against every reconstruction (columns)."""
    return rouge_matrices(references, candidates)["rouge1"]


TIE_BREAK = 1e-9  # ROUGE-2 and ROUGE-L weigh this little: they only choose among equal-ROUGE-1 pairings


def pairing_matrix(matrices: dict[str, np.ndarray]) -> np.ndarray:
    """What :func:`assign` maximises: ROUGE-1, ties broken by ROUGE-2 and ROUGE-L (two sentences with the same
    words in another order tie on ROUGE-1; pairing them crosswise would understate ROUGE-2 of an exact answer)."""
    return matrices["rouge1"] + TIE_BREAK * (matrices["rouge2"] + matrices["rougeL"])


def random_pairing_rouge1(matrix: np.ndarray) -> float:
    """Expected mean ROUGE-1 per reference under a uniformly random one-to-one pairing.

    With n references and m reconstructions, each reference meets each reconstruction with probability
    min(n, m) / (n m) and an unpaired reference scores 0, so the expectation is sum(matrix) / (n * max(n, m)):
    the plain mean of the matrix when n = m."""
    n, m = matrix.shape
    if n == 0 or m == 0:
        return 0.0
    return float(matrix.sum() / (n * max(n, m)))


def assign(references: Sequence[str], candidates: Sequence[str],
           matrix: np.ndarray | None = None) -> list[int | None]:
    """For each reference, the index of its reconstruction under the best ROUGE-1 assignment (None if unpaired);
    ``matrix``: what to maximise (default :func:`pairing_matrix`)."""
    if len(references) == 1 and len(candidates) == 1:
        return [0]
    matrix = pairing_matrix(rouge_matrices(references, candidates)) if matrix is None else matrix
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    pairing: list[int | None] = [None] * len(references)
    for r, c in zip(rows, cols):
        pairing[int(r)] = int(c)
    return pairing


def special_ids_of(tokenizer: object) -> frozenset[int]:
    """The ids left out of token metrics: the tokenizer's special tokens (BERT's when it has none listed)."""
    ids = getattr(tokenizer, "all_special_ids", None)
    return frozenset(int(i) for i in ids) if ids else BERT_SPECIAL_IDS


def score(reconstruction: Reconstruction, truth: GroundTruth, special_ids: Collection[int] | None = None) -> dict:
    """Batch-level metrics (module doc). ``special_ids``: ids left out of token metrics, from the caller's
    tokenizer (:func:`special_ids_of`); default BERT's. The attack's ``info`` is not read for them."""
    special = set(special_ids if special_ids is not None else BERT_SPECIAL_IDS)
    single = len(truth.texts) == 1 and len(reconstruction.texts) == 1
    matrices = None if single else rouge_matrices(truth.texts, reconstruction.texts)
    pairing = assign(truth.texts, reconstruction.texts, None if single else pairing_matrix(matrices))
    per_ref: list[dict[str, float | None]] = []
    for i, j in enumerate(pairing):
        ref_ids = content(truth.token_ids[i], special)
        if j is None:
            per_ref.append({**dict.fromkeys(ROUGE_TYPES, 0.0), "recover_rate": 0.0, "token_accuracy": 0.0,
                            "label_correct": None, "token_precision": 0.0, "token_f1": 0.0})
            continue
        guesses = [content(step[j], special) for step in reconstruction.trajectory if j < len(step)]
        guesses.append(content(reconstruction.token_ids[j], special))
        scores = rouge(truth.texts[i], reconstruction.texts[j]) if single else \
            {k: float(matrices[k][i, j]) for k in ROUGE_TYPES}
        paired = scores["rouge1"] > 0  # a pairing with no overlap says nothing about which label goes where
        per_ref.append({
            **scores,
            "recover_rate": recover_rate(ref_ids, guesses),
            "token_accuracy": positional_accuracy(ref_ids, guesses[-1]),
            "label_correct": float(j < len(reconstruction.labels) and reconstruction.labels[j] == truth.labels[i])
            if paired else None,
            "token_precision": token_precision(ref_ids, guesses[-1]),
            "token_f1": token_f1(ref_ids, guesses[-1]),
        })
    result = {key: _mean([p[key] for p in per_ref]) for key in per_ref[0]}
    result["rouge1_random_pairing"] = result["rouge1"] if single else random_pairing_rouge1(matrices["rouge1"])
    certified = list(getattr(reconstruction, "certified", []) or [])
    result["certified_share"] = float(np.mean(certified)) if certified else 0.0
    analytic = reconstruction.info.get("analytic_labels")
    result["analytic_label_correct"] = None if analytic is None else \
        sum((Counter(analytic) & Counter(truth.labels)).values()) / len(truth.labels)
    result["assignment"] = pairing
    return result


def _mean(values: Sequence[float | None]) -> float | None:
    """Mean over the values that are not None (NaN ones skipped too); None when nothing is left."""
    kept = [v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))]
    return float(np.mean(kept)) if kept else None
