"""`span`'s linker on the `tiny` model (random init, B = 2): the first FFN's gradient span tells which candidate
tokens form one sequence; descent from any mixture of the pools lands on a true sequence; `assemble` recovers the
batch, within its descent budget and deadline. The model is the attack tests' ``uniform:0.1`` one: at
``normal:0.02`` the 32-wide tiny model's first FFN is nearly linear, its gradient span is the whole space, and
only the ledger (test_span_ledger.py) tells mixtures from sequences."""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from adversary.case import Observation
from adversary.options import Budget
from adversary.registry import run_attack
from adversary.span.ledger import Ledger
from adversary.span.linker import Linker, assemble
from adversary.span.subspace import (LayerInputs, attention_grads, attention_names, gradient_span, linker_span,
                                     members)
from adversary.token_set import token_set
from fedsim.core.text import make_batch
from fedsim.core.train import EPS32, batch_gradients

CERT = math.sqrt(EPS32)
FFN = "bert.encoder.layer.0.intermediate.dense.weight"

pytestmark = pytest.mark.usefixtures("one_thread")


def build(model, tokenizer, texts: list[str], labels: list[int]):
    """Observation, ledger, linker and the true (token, segment) sequences of a fresh batch."""
    batch = make_batch(tokenizer, texts, labels)
    obs = Observation(model, batch_gradients(model, batch), len(texts), tokenizer)
    inputs = LayerInputs(model)
    found, _ = members(obs, gradient_span(attention_grads(obs, 0)), inputs, token_set(obs))
    ledger = Ledger(obs, inputs, found)
    linker = Linker(obs, linker_span(obs.gradients[FFN], len(texts) * len(found)), ledger.superset)
    truth = [[(int(batch["input_ids"][i, p]), int(batch["token_type_ids"][i, p])) for p in range(n)]
             for i, n in enumerate(batch["attention_mask"].sum(1).tolist())]
    return obs, ledger, linker, truth


@pytest.fixture(scope="module")
def same_length(tiny, tokenizer):
    return build(tiny, tokenizer, ["the cat sat", "a dog ran"], [0, 1])


def test_true_sequences_score_below_the_certificate_and_mixtures_far_above(same_length):
    _, ledger, linker, truth = same_length
    pools, _ = ledger.pools()
    every = [list(q) for q in itertools.product(*pools)]
    assert len(every) == 8  # two candidates at each content position
    scores = linker.score(every).tolist()
    for seq, value in zip(every, scores):
        assert (value < CERT) == (seq in truth), (seq, value)
    assert max(v for s, v in zip(every, scores) if s in truth) < CERT / 10
    assert min(v for s, v in zip(every, scores) if s not in truth) > CERT * 10


def test_descent_from_any_mixture_of_the_pools_lands_on_a_true_sequence(same_length):
    _, ledger, linker, truth = same_length
    pools, _ = ledger.pools()
    for start in itertools.product(*pools):
        seq, value, _ = linker.descend(list(start), pools, stop=CERT)
        assert list(seq) in truth and value < CERT, (start, seq)


def test_a_steepest_descent_takes_one_change_a_step_and_still_lands_on_a_true_sequence(tiny, tokenizer):
    _, ledger, linker, truth = build(tiny, tokenizer, ["the cat sat on a mat", "a dog ran to the park"], [0, 1])
    pools, _ = ledger.pools()
    wider = 0
    for start in itertools.product(*pools):
        start = list(start)
        one = linker.descend(start, pools, sweeps=1, steepest=True)
        changed = [p for p, (a, b) in enumerate(zip(one.seq, start)) if a != b]
        swap = len(changed) == 2 and one.seq[changed[0]] == start[changed[1]] and one.seq[changed[1]] == start[changed[0]]
        assert len(changed) <= 1 or swap, (start, one.seq)
        wider += sum(a != b for a, b in zip(linker.descend(start, pools, sweeps=1).seq, start)) > len(changed)
        seq, value, _ = linker.descend(start, pools, stop=CERT, steepest=True)
        assert list(seq) in truth and value < CERT, (start, seq)
    assert wider > 0  # the default step takes several improving changes at once somewhere


def test_a_bag_one_word_off_in_the_wrong_order_is_one_rebag_from_the_truth(tiny, tokenizer):
    """The template trap (tinybert4, B = 8 pii sentences): the descent stops on a bag one word off whose missing
    word fits only where another sits; no single change or exchange reaches the sentence, one change of bag does."""
    obs, ledger, *_ = build(tiny, tokenizer, ["grace walker paid the invoice of ten dollars",
                                              "irene hall paid the bill of ten euros"], [0, 1])
    ids = lambda text: [(t, 0) for t in tokenizer.convert_tokens_to_ids(text.split())]  # noqa: E731
    truth = ids("[CLS] grace walker paid the in ##vo ##ice of ten dollars [SEP]")
    trap = ids("[CLS] grace walker paid euros the ##vo ##ice of in dollars [SEP]")  # 'ten' out, 'euros' in
    pools = [[c] for c in truth]
    pools[4], pools[5], pools[9] = ids("the euros"), ids("in the"), ids("ten in")
    linker = Linker(obs, linker_span(obs.gradients[FFN], 2 * len(pools)), pools)
    here = float(linker.score([trap])[0])
    singles = [trap[:p] + [c] + trap[p + 1:] for p in range(len(trap)) for c in pools[p] if c != trap[p]]
    swapped = linker._best_swap(trap, pools, here)
    assert truth not in singles and (swapped is None or swapped[0] != truth)
    seq, value = linker._best_rebag(trap, pools, here)
    assert seq == truth and value < CERT
    assert linker._best_rebag(truth, pools, value) is None  # nothing below the truth


def test_assemble_recovers_a_padded_batch_within_its_budget(tiny, tokenizer):
    obs, ledger, linker, truth = build(tiny, tokenizer, ["anna paid", "he won today"], [1, 0])
    sep = obs.tokenizer.sep_token_id
    done = assemble(obs, ledger, linker, sep, seed=0, restarts=4, budget=64)
    assert done.certified == 2 and sorted(done.sequences) == sorted(truth) and not done.out_of_time
    assert sorted(done.labels) == [0, 1] and 2 <= done.descents <= 64
    obs, ledger, linker, _ = build(tiny, tokenizer, ["anna paid", "he won today"], [1, 0])
    assert assemble(obs, ledger, linker, sep, seed=0, restarts=4, budget=0).descents == 0
    late = assemble(obs, ledger, linker, sep, seed=0, restarts=4, budget=64, deadline=time.perf_counter() - 1)
    assert late.descents == 0 and late.out_of_time and late.certified == 0


def test_the_attack_counts_descents_as_iterations_and_stops_at_its_budget(same_length):
    obs, *_ = same_length
    rec = run_attack("span", obs, Budget(1000), seed=0)
    assert rec.info["span_check_passed"] and rec.iterations == rec.info["descents"] >= 2
    starved = run_attack("span", obs, Budget(1), seed=0)
    assert starved.iterations == 1 and not starved.info["span_check_passed"]
    assert run_attack("span", obs, Budget(1000), seed=0, options={"max_descents": 1}).iterations == 1


SHARED = ["the cat saw a dog", "a dog saw the cat"]  # the same words: neither explains a token's gradient alone
NEIGHBOURS = ["susan told her a story", "susan told a story to her", "he left"]  # CoLA-like neighbours


def test_sentences_with_the_same_words_explain_the_ledger_only_together(tiny, tokenizer):
    _, ledger, _, truth = build(tiny, tokenizer, SHARED, [0, 1])
    assert [ledger.explain(q)[2] for q in truth] == [0, 0]
    labels, rows, explained = ledger.explain_group(truth)
    assert labels == [0, 1] and explained == sum(len(q) for q in truth)  # every occurrence, [CLS]/[SEP] too
    first, second = truth  # the same tokens at the same positions, wrongly joined: they add up to nothing
    mixed = [first[:3] + second[3:], second[:3] + first[3:]]
    assert ledger.explain_group(mixed)[2] == 0


@pytest.mark.parametrize("texts", [SHARED, NEIGHBOURS])
def test_assemble_recovers_sentences_that_share_their_words(tiny, tokenizer, texts):
    """A true sequence whose tokens are all in other unsettled ones waits, and is settled once they are (or with
    its partner); it used to be rejected for good, leaving the batch unfinished well within the budget."""
    labels = [0, 1, 1][: len(texts)]
    obs, ledger, linker, truth = build(tiny, tokenizer, texts, labels)
    done = assemble(obs, ledger, linker, obs.tokenizer.sep_token_id, seed=0, restarts=4, budget=64)
    assert done.certified == len(texts) and sorted(done.sequences) == sorted(truth)
    assert sorted(done.labels) == sorted(labels)
    rec = run_attack("span", obs, Budget(1000), seed=0)
    assert rec.info["span_check_passed"] and sorted(rec.texts) == sorted(texts)


def test_a_derived_gradient_settles_isolated_sequences_above_the_float32_cut(tiny, tokenizer):
    """A gradient the server derived from weights carries an error (published with it) that moves true sequences
    off the span: here (relative error 3e-5) above sqrt(eps32), where only the float32 cut used to settle them.
    Each is still far below all its single-token changes (ISOLATION), so the linker settles it; the reproduction
    test, not the linker, certifies. On the old rule one of four settled in 225 descents."""
    texts, labels = ["the cat sat", "a dog ran", "anna paid", "he won today"], [0, 1, 1, 0]
    batch = make_batch(tokenizer, texts, labels)
    exact = batch_gradients(tiny, batch)
    gen = torch.Generator().manual_seed(0)
    noisy = {}
    for name, g in exact.items():
        e = torch.randn(g.shape, generator=gen, dtype=torch.float64)
        noisy[name] = (g.double() + e / e.norm() * 3e-5 * g.double().norm()).float()
    error = {n: float((noisy[n].double() - exact[n].double()).norm()) for n in exact}
    obs = Observation(tiny, noisy, len(texts), tokenizer, gradient_error=error, typical_error=error)
    inputs = LayerInputs(tiny)
    span1 = gradient_span(attention_grads(obs, 0), error=obs.search_error_of(attention_names(obs, 0)))
    found, _ = members(obs, span1, inputs, token_set(obs))
    ledger = Ledger(obs, inputs, found)
    linker = Linker(obs, linker_span(obs.gradients[FFN], len(texts) * len(found), obs.search_error_of([FFN])),
                    ledger.superset)
    truth = [[(int(batch["input_ids"][i, p]), int(batch["token_type_ids"][i, p])) for p in range(n)]
             for i, n in enumerate(batch["attention_mask"].sum(1).tolist())]
    done = assemble(obs, ledger, linker, tokenizer.sep_token_id, seed=0, restarts=4, budget=64)
    settled = done.sequences[: done.certified]
    assert done.certified >= 3 and all(q in truth for q in settled)
    assert max(done.distances[: done.certified]) > CERT  # settled by isolation, not by the float32 cut


def test_a_changes_own_distance_is_its_positions_distance_in_the_full_forward(same_length):
    """The shortlist's cheap score (one position's output, the change's key and value swapped in) is exactly what
    the full mixing gives at that position."""
    _, ledger, linker, truth = same_length
    pools, _ = ledger.pools()
    seq = list(truth[0])
    moves = [(p, c) for p, pool in enumerate(pools) for c in pool if c != seq[p]]
    assert moves
    own = linker.own_distance(seq, moves)
    sa, so = linker.attn.self, linker.attn.output
    torch.set_grad_enabled(False)
    for (p, c), value in zip(moves, own.tolist()):
        changed = seq[:p] + [c] + seq[p + 1:]
        idx = torch.tensor([[linker.index[(i, t)] for i, t in enumerate(changed)]])
        x, q, k, v = (f[idx] for f in linker.feats)
        q, k, v = (t.view(1, len(changed), sa.num_attention_heads, -1).transpose(1, 2) for t in (q, k, v))
        ctx = torch.softmax(q @ k.transpose(-1, -2) * sa.attention_head_size ** -0.5, dim=-1) @ v
        y = so.LayerNorm(so.dense(ctx.transpose(1, 2).reshape(1, len(changed), -1)) + x)[0, p]
        y = y / y.norm()
        assert value == pytest.approx(float((y - (y @ linker.basis) @ linker.basis.T).norm()), rel=1e-4, abs=1e-6)
    torch.set_grad_enabled(True)
