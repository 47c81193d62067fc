"""Which tokens the batch holds, read from the word-embedding gradient (the first step of LAMP, DAGER, FILM).

Row ``t`` of dL/dE (E the word-embedding matrix) is the sum of the gradients at every position holding token ``t``,
so when E feeds nothing else (BERT classifiers: no tied output layer) the non-zero rows are *exactly* the batch's
tokens; padding adds nothing (its positions get no gradient, and the [PAD] row has none by construction).
When E is tied to an output layer every row is non-zero: we then cut the row norms at their largest gap, relative to
the largest row, and only where the gap stands out from the spread of the rows below it. An untied gradient with
every row non-zero has been noised: its zero pattern is gone, and we exclude nothing rather than drop real tokens
buried in the noise.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from adversary.case import Observation


def word_embedding_name(model: PreTrainedModel) -> str | None:
    """Parameter name of the input word-embedding matrix (None for a model without one)."""
    embeddings = model.get_input_embeddings()
    if embeddings is None:
        return None
    target = id(embeddings.weight)
    return next((n for n, p in model.named_parameters() if id(p) == target), None)


def embeddings_tied(model: PreTrainedModel) -> bool:
    """True when the word embeddings are shared with an output layer (their gradient then covers the vocabulary)."""
    out = model.get_output_embeddings()
    return out is not None and out.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def token_set(observation: Observation) -> torch.LongTensor:
    """Sorted ids of the tokens in the batch; the whole vocabulary when the gradient cannot tell.

    Exact (non-zero rows) for untied embeddings whose gradient is plausible: at most B x max_positions rows and
    not the whole vocabulary (else it was noised: everything). Tied embeddings: a norm threshold at the largest
    gap of the sorted row norms, kept only when that gap exceeds the relative spread of the rows below it.
    """
    name = word_embedding_name(observation.model)
    grad = observation.gradients.get(name) if name else None
    vocab = observation.model.get_input_embeddings().weight.shape[0]
    if grad is None:
        return torch.arange(vocab)
    norms = grad.detach().double().norm(dim=1)
    nonzero = torch.nonzero(norms > 0).squeeze(1)
    max_tokens = observation.batch_size * int(getattr(observation.model.config, "max_position_embeddings", 512))
    if not embeddings_tied(observation.model):
        return nonzero if 0 < nonzero.numel() <= min(max_tokens, vocab - 1) else torch.arange(vocab)
    return _largest_gap(norms, max_tokens)


def _largest_gap(norms: torch.Tensor, max_tokens: int) -> torch.LongTensor:
    """Rows above the largest log-gap of the sorted norms, if that gap is larger than the bulk's own spread."""
    values, order = torch.sort(norms, descending=True)
    limit = min(max_tokens, values.numel() - 1)
    logs = torch.log(values.clamp_min(torch.finfo(torch.float64).tiny))
    gaps = logs[:limit] - logs[1:limit + 1]
    k = int(torch.argmax(gaps)) + 1  # keep the k largest rows
    bulk = logs[k:]
    spread = float(bulk[0] - bulk.median()) if bulk.numel() > 1 else 0.0
    if float(gaps[k - 1]) <= spread:
        return torch.arange(norms.numel())
    return torch.sort(order[:k]).values
