"""Reading the noise level of a noised gradient, and what an attack can still trust under it.

A client that adds Gaussian noise N(0, sigma^2) to every coordinate (``noise:sigma=S``, DP-style defenses) hides
sigma in plain sight: in a BERT classifier, the word-embedding gradient of the ~30,000 tokens *not* in the batch
is exactly zero before the noise, so those rows are pure noise. Their median norm gives sigma (the norm of H
Gaussian coordinates has median ~ sigma * sqrt(H - 2/3)); the rows well above the largest norm noise alone would
reach are the batch's tokens; and each gradient tensor's signal-to-noise ratio follows. Everything here returns
"nothing known" (0 or None) for a clean gradient or a model whose embeddings are tied to an output layer.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from scipy.stats import chi2

from adversary.case import Observation
from adversary.token_set import embeddings_tied, word_embedding_name


def _embedding_rows(observation: Observation) -> torch.Tensor | None:
    name = word_embedding_name(observation.model)
    grad = observation.gradients.get(name) if name else None
    if grad is None or embeddings_tied(observation.model):
        return None
    return grad.detach().double().norm(dim=1)


def noise_level(observation: Observation) -> float:
    """Estimated per-coordinate noise std of the observed gradient (0: clean, or cannot tell)."""
    rows = _embedding_rows(observation)
    if rows is None:
        return 0.0
    hidden = observation.gradients[word_embedding_name(observation.model)].shape[1]
    return float(rows.median()) / math.sqrt(max(hidden - 2 / 3, 1.0))


def noisy_token_set(observation: Observation, sigma: float, false_positives: float = 0.01) -> torch.Tensor | None:
    """Tokens whose embedding-gradient row stands above what noise alone reaches (expected ``false_positives``
    noise rows let through over the whole vocabulary); None if sigma is 0 or the count is implausible: more than
    the batch holds, or (lengths known) fewer than half its content positions, since a decoder restricted to a
    set missing real tokens can never produce them. Tokens whose gradient is below the noise are lost."""
    rows = _embedding_rows(observation)
    if rows is None or sigma <= 0:
        return None
    vocab, hidden = rows.numel(), observation.gradients[word_embedding_name(observation.model)].shape[1]
    # a noise row's squared norm is sigma^2 * chi-square(H): the norm passed with probability false_positives / vocab
    threshold = sigma * math.sqrt(float(chi2.isf(false_positives / vocab, hidden)))
    kept = torch.nonzero(rows > threshold).squeeze(1)
    lengths = observation.seq_lengths
    capacity = sum(lengths) if lengths else observation.batch_size * int(
        getattr(observation.model.config, "max_position_embeddings", 512))
    least = math.ceil(sum(n - 2 for n in lengths) / 2) if lengths else 1
    return kept if max(least, 1) <= kept.numel() <= capacity else None


def signal_weights(tensors: Sequence[torch.Tensor], sigma: float) -> torch.Tensor:
    """Per tensor, the share of its squared norm that is signal: 1 - numel * sigma^2 / ||g||^2, clipped to
    [0, 1]. All ones when sigma is 0. A tensor the noise swamps then stops steering a per-tensor distance."""
    sq = torch.stack([t.detach().double().square().sum() for t in tensors])
    numel = torch.tensor([t.numel() for t in tensors], dtype=torch.float64)
    if sigma <= 0:
        return torch.ones(len(tensors), dtype=torch.float64)
    return (1 - numel * sigma ** 2 / sq.clamp_min(1e-300)).clamp(0.0, 1.0)
