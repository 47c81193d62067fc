"""Peeling: what is left of an observation once the server knows part of what made it.

A batch gradient is the mean of its sequences' own gradients, and a FedAvg update the mean of its local steps'
gradients. Whatever an attack has recovered exactly, the server can recompute at the weights it was taken at and
take off, leaving an observation of the rest: fewer sequences, so fewer spurious candidates (a weak sentence's
tokens drown among linear combinations of a strong one's in the joint span, and stand clear once it is gone).
The error bound is carried along, scaled as the subtraction scales it; certification still judges the whole
answer against the original observation.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import torch

from adversary.case import Observation
from adversary.distance import candidate_batch
from fedsim.core.train import EPS32, batch_gradients, sgd_step


def _rest(observation: Observation, known: dict[str, torch.Tensor], whole: int, part: int, **changes
          ) -> Observation:
    """(whole * G - part * known) / (whole - part) with its error, as an observation of ``whole - part`` units."""
    rest = {n: ((whole * g.double() - part * known[n].double()) / (whole - part)).float()
            for n, g in observation.gradients.items()}

    def carried(errors: dict[str, float] | None) -> dict[str, float] | None:
        return None if errors is None else {
            n: (whole * e + part * EPS32 * float(known[n].double().norm())) / (whole - part) for n, e in errors.items()}

    return dataclasses.replace(observation, gradients=rest, gradient_error=carried(observation.gradient_error),
                               typical_error=carried(observation.typical_error), **changes)


def peel_sequences(observation: Observation, token_ids: Sequence[Sequence[int]], labels: Sequence[int],
                   segments: Sequence[Sequence[int]] | None = None) -> Observation:
    """A batch gradient (one step) without some of its sequences: the gradient of the other B - k, at the same
    weights. Public lengths and segments lose the peeled sequences' entries."""
    if observation.local_steps > 1:
        raise ValueError("peel_sequences takes one step's gradient; a FedAvg update is peeled by peel_first_step")
    k, size = len(token_ids), observation.batch_size
    if not 0 < k < size:
        raise ValueError(f"can peel 1 to {size - 1} of {size} sequences, got {k}")
    known = batch_gradients(copy.deepcopy(observation.model),
                            candidate_batch(observation, token_ids, labels, segments))
    lengths, segment_ids = observation.seq_lengths, observation.segment_ids
    if lengths is not None:
        keep = list(range(len(lengths)))
        for q in token_ids:
            match = next((i for i in keep if lengths[i] == len(q)), None)
            if match is not None:
                keep.remove(match)
        lengths = [lengths[i] for i in keep]
        segment_ids = [segment_ids[i] for i in keep] if segment_ids is not None else None
    return _rest(observation, known, size, k, batch_size=size - k, seq_lengths=lengths, segment_ids=segment_ids)


def peel_first_step(observation: Observation, token_ids: Sequence[Sequence[int]],
                    labels: Sequence[int]) -> Observation:
    """What is left of a FedAvg update once its first local step is known: the steps 2..E, as an observation.

    U = (g_1(w_0) + ... + g_E(w_{E-1})) / E, and the server can compute g_1 exactly from the first batch (the B
    sequences the attack recovered at the global weights w_0: they are the ones that sit in w_0's spans without
    drift). Then (E U - g_1) / (E - 1) is the mean of the later steps' gradients, taken from w_1 = w_0 - lr g_1:
    an ordinary gradient of B sequences at w_1 when E = 2 (no drift left to fight), else a FedAvg update of E - 1
    steps, peeled the same way."""
    steps, lr = observation.local_steps, observation.learning_rate
    model = copy.deepcopy(observation.model)
    first = batch_gradients(model, candidate_batch(observation, token_ids, labels))
    sgd_step(model, first, lr)
    return _rest(observation, first, steps, 1, model=model.eval(), batch_size=observation.batch_size - len(token_ids),
                 seq_lengths=None, segment_ids=None, local_steps=steps - 1, learning_rate=lr if steps > 2 else None)
