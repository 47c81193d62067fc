"""The `span` attack and the token set on the `tiny` model (random init): exact recovery, and an honest failure
when the gradient carries noise. Sentences are written here; no ../shared, no network."""

from __future__ import annotations

import pytest
import torch

from adversary.case import Observation
from adversary.options import Budget
from adversary.registry import get_attack
from adversary.span import gradient_span
from adversary.token_set import token_set
from fedsim.core.models import build_model
from fedsim.core.text import load_tokenizer, make_batch
from fedsim.core.train import batch_gradients

SINGLE = ["mary paid twenty dollars to the bank in boston."]
BATCH = ["anna paid", "he won today", "hello", "john left"]  # 4, 5, 3 and 4 tokens with [CLS]/[SEP]: padding
BUDGET = Budget(1000)  # linker descents: more than span's own cap (64 x B), so that cap decides


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def observe(tokenizer, texts: list[str], labels: list[int], seed: int = 0, noise: float = 0.0):
    model = build_model("tiny", "normal:0.02", seed=seed)
    batch = make_batch(tokenizer, texts, labels)
    grads = batch_gradients(model, batch)
    if noise:
        gen = torch.Generator().manual_seed(seed)
        grads = {k: v + noise * v.std() * torch.randn(v.shape, generator=gen) for k, v in grads.items()}
    return Observation(model, grads, len(texts), tokenizer), batch


def test_single_sentence_is_recovered_exactly(tokenizer):
    obs, batch = observe(tokenizer, SINGLE, [1], seed=1)
    rec = get_attack("span")(obs, BUDGET, 0, {"gradient_distance": True})
    assert rec.info["span_check_passed"]
    assert rec.token_ids == [batch["input_ids"][0].tolist()]
    assert rec.texts == SINGLE
    assert rec.labels == [1]
    assert rec.gradient_distance < 1e-6


def test_batch_of_four_with_padding_is_recovered_exactly(tokenizer):
    labels = [0, 1, 1, 0]
    obs, batch = observe(tokenizer, BATCH, labels)
    assert batch["attention_mask"].sum(1).tolist() == [4, 5, 3, 4]  # padded to 5
    rec = get_attack("span")(obs, BUDGET)
    assert rec.info["span_check_passed"]
    assert sorted(rec.texts) == sorted(BATCH)
    truth = {t: y for t, y in zip(BATCH, labels)}
    assert [truth[t] for t in rec.texts] == rec.labels
    expected = {tuple(row[row != tokenizer.pad_token_id].tolist()) for row in batch["input_ids"]}
    assert {tuple(q) for q in rec.token_ids} == expected


def test_token_set_is_the_batch_tokens(tokenizer):
    obs, batch = observe(tokenizer, BATCH, [0, 1, 1, 0])
    real = batch["input_ids"][batch["attention_mask"].bool()]
    assert token_set(obs).tolist() == sorted(set(real.tolist()))
    assert tokenizer.pad_token_id not in token_set(obs).tolist()


def test_noise_makes_the_span_check_fail(tokenizer):
    obs, _ = observe(tokenizer, SINGLE, [1], noise=1e-2)
    rec = get_attack("span")(obs, BUDGET)
    assert rec.info["span_check_passed"] is False
    assert rec.texts == [""]
    assert token_set(obs).numel() == obs.model.get_input_embeddings().weight.shape[0]  # no false restriction
    # The noised first-layer gradient has no drop to float32 rounding: it reads as full rank.
    clean, _ = observe(tokenizer, SINGLE, [1])
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert gradient_span([clean.gradients[name]]).passed
    assert not gradient_span([obs.gradients[name]]).passed


def test_past_the_rank_limit_span_says_so_and_best_certifies_nothing(tokenizer):
    """tiny has hidden size 32: two pii sentences (39 tokens) are past the rank limit of exact recovery."""
    from adversary.case import observe
    from adversary.options import Budget
    from adversary.registry import run_attack
    from fedsim.core.data import generate_pii
    from fedsim.core.text import make_batch

    data = generate_pii("train", 0, 2)
    observation, truth = observe(build_model("tiny", "uniform:0.1", seed=0),
                                 make_batch(tokenizer, data["text"], data["label"]), tokenizer, public_lengths=True)
    assert sum(len(q) for q in truth.token_ids) > 32
    span = run_attack("span", observation, Budget(100), seed=0)
    assert span.info["over_rank_limit"] is True and "past the rank limit" in span.info["reason"]
    best = run_attack("best", observation, Budget(5), seed=0, options={"attacks": ("tag",)})
    assert best.info["over_rank_limit"] is True and best.certified == [False, False]


TEMPLATE = ["please pay alice ten dollars", "please pay bob ten dollars", "please pay alice five dollars",
            "please call bob today", "please call alice today", "please pay carol five dollars",
            "please call carol today", "please pay bob five dollars"]  # every word shared with other sentences


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eight_sentences_that_share_most_tokens_are_recovered_exactly_and_certified(tokenizer, seed):
    """Issue #11's template-text case on `tiny` (`uniform:0.1`): 53 tokens against d = 32, but a first-layer input
    is a (token, position) pair and the 8 sentences have only 13 distinct ones, so the span is small; linking
    shared words into the right sentences is the hard part. Every sequence reproduces the gradient (certified)."""
    model = build_model("tiny", "uniform:0.1", seed=seed)
    labels = [i % 2 for i in range(len(TEMPLATE))]
    batch = make_batch(tokenizer, TEMPLATE, labels)
    assert int(batch["attention_mask"].sum()) > model.config.hidden_size  # past the naive rank count
    obs = Observation(model, batch_gradients(model, batch), len(TEMPLATE), tokenizer)
    rec = get_attack("span")(obs, BUDGET)
    assert sorted(rec.texts) == sorted(TEMPLATE)
    assert rec.certified == [True] * len(TEMPLATE)
    truth = dict(zip(TEMPLATE, labels))
    assert [truth[t] for t in rec.texts] == rec.labels
