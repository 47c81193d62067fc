"""`span`'s subspace tests on the `tiny` model (random init): the first layer's gradient row space holds exactly
the batch's layer inputs. Sentences are written here; no ../shared, no network."""

from __future__ import annotations

import pytest
import torch

from adversary.case import Observation
from adversary.span.subspace import (LayerInputs, attention_grads, gradient_span, linker_span, members,
                                     nonzero_rows)
from adversary.token_set import token_set
from fedsim.core.models import build_model
from fedsim.core.text import load_tokenizer, make_batch
from fedsim.core.train import batch_gradients

SENTENCE = "mary paid twenty dollars to the bank in boston."

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def case():
    tokenizer = load_tokenizer()
    model = build_model("tiny", "normal:0.02", seed=1)
    batch = make_batch(tokenizer, [SENTENCE], [1])
    obs = Observation(model, batch_gradients(model, batch), 1, tokenizer)
    return obs, batch["input_ids"][0].tolist()


def test_rank_is_the_number_of_tokens(case):
    obs, ids = case
    span = gradient_span(attention_grads(obs, 0))
    assert span.passed and span.rank == len(ids)  # one independent layer input per position (L < hidden size)
    assert 0 < span.tol < 0.1
    assert nonzero_rows(obs, obs.model.base_model.embeddings.position_embeddings.weight) == list(range(len(ids)))


def test_true_token_at_its_position_is_in_the_span_and_others_are_not(case):
    obs, ids = case
    span, inputs = gradient_span(attention_grads(obs, 0)), LayerInputs(obs.model)
    gen = torch.Generator().manual_seed(0)
    outsiders = torch.tensor([t for t in torch.randint(1000, 30000, (200,), generator=gen).tolist() if t not in ids])
    for p, t in enumerate(ids):
        assert float(span.distance(inputs.x(torch.tensor([t]), p, 0))[0]) < span.tol
        assert bool((span.distance(inputs.x(outsiders, p, 0)) > 2 * span.tol).all())  # measured: > 4 x tol
    # a token of the sentence one place off is out too: the position embedding is part of x
    for p in range(len(ids) - 1):
        if ids[p] not in ids[p + 1:p + 2]:
            assert float(span.distance(inputs.x(torch.tensor([ids[p]]), p + 1, 0))[0]) > 2 * span.tol


def test_members_are_the_sentence_in_order(case):
    obs, ids = case
    span = gradient_span(attention_grads(obs, 0))
    found, length = members(obs, span, LayerInputs(obs.model), token_set(obs))
    assert length == len(ids)
    assert [[(t, s) for t, s, _ in row] for row in found] == [[(t, 0)] for t in ids]


def test_a_chosen_rank_does_not_pass_and_the_linker_keeps_enough_directions(case):
    obs, ids = case
    grads = attention_grads(obs, 0)
    span = gradient_span(grads)
    cut = span.with_rank(span.rank - 1)
    assert cut.rank == span.rank - 1 and not cut.passed
    assert not gradient_span(grads, rank=span.rank).passed  # only a rank read from the spectrum passes
    ffn = obs.gradients["bert.encoder.layer.0.intermediate.dense.weight"]
    wide = linker_span(ffn, max_tokens=3 * len(ids))
    n = wide.singular.numel()
    assert wide.rank == max(gradient_span([ffn]).rank, min(3 * len(ids), n - n // 5))
