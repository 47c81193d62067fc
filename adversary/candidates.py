"""How well a candidate batch of token ids explains the observed gradient: one yardstick for every attack.

`best` picks among the outputs of different attacks, each of which reports its own loss on its own terms (TAG's
L2 + L1 of a continuous dummy, LAMP's cosine with a regulariser, span none at all). Those numbers cannot be
compared, so a candidate is judged here by the gradient its *decoded tokens* produce: 1 - cosine similarity with
the observed gradient over every observed tensor (word embeddings included), accumulated in float64. Cosine, not
L2, so that clipping (a rescaled gradient) does not change the ranking. Only the observation is read.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from adversary.case import Observation
from fedsim.core.train import batch_gradients


def candidate_batch(observation: Observation, token_ids: Sequence[Sequence[int]],
                    labels: Sequence[int]) -> dict[str, torch.Tensor]:
    """The model input for candidate sequences (special tokens included), padded, with their labels.

    Segment ids come from the observation when it has them for sequences of these lengths, else all zeros.
    """
    pad = observation.tokenizer.pad_token_id or 0
    width = max(len(q) for q in token_ids)
    ids = torch.full((len(token_ids), width), pad, dtype=torch.long)
    mask, types = torch.zeros_like(ids), torch.zeros_like(ids)
    segments = observation.segment_ids
    for i, seq in enumerate(token_ids):
        ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
        if segments is not None and i < len(segments) and len(segments[i]) == len(seq):
            types[i, : len(seq)] = torch.tensor(list(segments[i]), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
            "labels": torch.tensor([int(y) for y in labels], dtype=torch.long)}


def gradient_distance(observation: Observation, token_ids: Sequence[Sequence[int]], labels: Sequence[int]) -> float:
    """1 - cosine(gradient of the candidate batch, observed gradient); ``inf`` for a malformed candidate (wrong
    number of sequences or labels, an empty sequence), so that it never wins."""
    if (len(token_ids) != observation.batch_size or len(labels) != len(token_ids)
            or any(len(q) == 0 for q in token_ids)):
        return math.inf
    grads = batch_gradients(observation.model, candidate_batch(observation, token_ids, labels))
    names = [n for n in observation.gradients if n in grads]
    dot = sq_a = sq_b = 0.0
    for name in names:
        a, b = grads[name].double(), observation.gradients[name].double()
        dot += float((a * b).sum())
        sq_a += float(a.square().sum())
        sq_b += float(b.square().sum())
    if sq_a == 0.0 or sq_b == 0.0:
        return math.inf
    return 1.0 - dot / math.sqrt(sq_a * sq_b)
