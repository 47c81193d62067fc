"""`span`'s candidate ledger on the `tiny` model (random init, B > 1): the embedding gradients narrow the
per-position candidates to the batch's tokens, and settling a found sequence takes its tokens off."""

from __future__ import annotations

import pytest
import torch

from adversary.case import Observation
from adversary.span.ledger import Ledger
from adversary.span.subspace import LayerInputs, attention_grads, gradient_span, members
from adversary.token_set import token_set
from fedsim.core.models import build_model
from fedsim.core.text import load_tokenizer, make_batch
from fedsim.core.train import batch_gradients

pytestmark = pytest.mark.usefixtures("one_thread")


def build(texts: list[str], labels: list[int]):
    """The ledger of a fresh observation, and the true (token, segment) sequences."""
    tokenizer = load_tokenizer()
    model = build_model("tiny", "normal:0.02", seed=0)
    batch = make_batch(tokenizer, texts, labels)
    obs = Observation(model, batch_gradients(model, batch), len(texts), tokenizer)
    inputs = LayerInputs(model)
    found, _ = members(obs, gradient_span(attention_grads(obs, 0)), inputs, token_set(obs))
    truth = []
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        truth.append([(int(batch["input_ids"][i, p]), int(batch["token_type_ids"][i, p])) for p in range(n)])
    return Ledger(obs, inputs, found), truth


@pytest.mark.parametrize("texts", [["the cat sat", "a dog ran"], ["anna paid", "he won today", "hello", "john left"]])
def test_pools_hold_each_true_token_at_its_position_and_nothing_else(texts):
    ledger, truth = build(texts, [0, 1, 1, 0][: len(texts)])
    pools, resolved = ledger.pools()
    assert len(pools) == max(len(q) for q in truth)
    for p, pool in enumerate(pools):
        at_p = {q[p] for q in truth if p < len(q)}
        assert at_p <= set(pool)  # the true token of every sequence long enough
        if resolved[p]:
            assert set(pool) == at_p  # an exact position holds the batch's tokens there and no others
    assert all(resolved[1:-1])  # every content position is exact on these batches ([CLS]/[SEP] may stay open)
    if len({len(q) for q in truth}) > 1:  # padding: the superset pairs [SEP] and later tokens; the ledger does not
        assert sum(map(len, pools)) < sum(map(len, ledger.superset))


def test_explain_and_settle_take_a_true_sequence_off_the_pools():
    ledger, truth = build(["the cat sat", "a dog ran"], [0, 1])
    first, second = truth
    label, rows, explained = ledger.explain(first)
    assert label == 0 and explained == len(first) - 2  # its content tokens; [CLS]/[SEP] are shared
    mixed = [first[0], second[1], first[2], second[3], first[4]]  # the batch's tokens, wrongly joined
    assert ledger.explain(mixed)[2] == 0
    ledger.settle(first, rows)
    pools, resolved = ledger.pools()
    content = [set(pool) for pool in pools[1:-1]]
    assert content == [{c} for c in second[1:-1]] and all(resolved[1:])
    assert torch.isfinite(rows).all()
