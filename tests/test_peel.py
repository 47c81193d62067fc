"""Peeling (adversary.peel): what is left of an observation once the server knows part of what made it."""

from __future__ import annotations

import dataclasses

import torch

from test_replay import _tiny_and_pii


def _relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    diff = sum(float((a[n].double() - b[n].double()).square().sum()) for n in a) ** 0.5
    return diff / sum(float(a[n].double().square().sum()) for n in a) ** 0.5


def test_peeling_known_sequences_leaves_the_gradient_of_the_others():
    """A batch gradient is the mean of its sequences' gradients: take two known ones off a batch of three and what
    is left is the third's own gradient, with the public lengths and the error bound following."""
    from adversary.case import observe
    from adversary.peel import peel_sequences
    from fedsim import task
    from fedsim.core.train import batch_gradients

    model, tok, data = _tiny_and_pii()
    batch = task.batch_of(data, [0, 1, 2], "bert-base-uncased", 12)
    observation, truth = observe(model, batch, tok, public_lengths=True)
    observation = dataclasses.replace(observation, gradient_error={n: 1e-6 for n in observation.gradients})
    rest = peel_sequences(observation, truth.token_ids[:2], truth.labels[:2])
    alone = batch_gradients(model, task.batch_of(data, [2], "bert-base-uncased", 12))
    assert rest.batch_size == 1 and rest.seq_lengths == [len(truth.token_ids[2])]
    assert _relative_difference(alone, rest.gradients) < 1e-5
    assert all(e >= 3e-6 for e in rest.gradient_error.values())  # 3 x the bound: B G - 2 g_known
    wrong = peel_sequences(observation, truth.token_ids[:2], [1 - y for y in truth.labels[:2]])
    assert _relative_difference(alone, wrong.gradients) > 1e-3


def test_a_peeled_residual_reads_its_own_length_not_the_rounding_left_past_it():
    """A FedAvg E = 2 update whose first step is longer than its second: once the first step is peeled off, the
    position rows past the second step hold float32 residue (not zeros). Read as "non-zero", they made span look
    for tokens at positions no sequence reaches, and fail there ("a position without candidates")."""
    from adversary.case import observe_fedavg
    from adversary.engine import infer_length
    from adversary.peel import peel_first_step
    from adversary.span.subspace import nonzero_rows
    from fedsim.core.text import make_batch

    model, tok, _ = _tiny_and_pii()
    steps = [make_batch(tok, ["The client sent his new card number to the bank on Monday."], [1]),
             make_batch(tok, ["Call me later."], [0])]
    observation, truth = observe_fedavg(model, steps, tok, 1.0)
    rest = peel_first_step(observation, truth.token_ids[:1], truth.labels[:1])
    short, long = len(truth.token_ids[1]), len(truth.token_ids[0])
    name = next(n for n in rest.gradients if n.endswith("position_embeddings.weight"))
    norms = rest.gradients[name].double().norm(dim=1)
    assert bool((norms[short:long] > 0).any())  # the residue this test is about is there
    assert infer_length(rest) == short
    assert nonzero_rows(rest, rest.model.base_model.embeddings.position_embeddings.weight) == list(range(short))
