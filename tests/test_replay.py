"""FedAvg updates: span's sequences certified by replaying the client's E local SGD steps (adversary.replay)."""

from __future__ import annotations

import pytest

from adversary.replay import certify_by_replay, ordered_splits, replayed_update, update_distance
from test_federation import _one_thread, _task_identity, read, run_local, small  # noqa: F401  (fixtures too)


@pytest.mark.parametrize("count, steps, expected", [(4, 2, 6), (2, 2, 2), (5, 5, 120), (6, 3, 90), (3, 1, 1)])
def test_ordered_splits_counts_every_split_once(count, steps, expected):
    splits = list(ordered_splits(count, steps))
    size = count // steps
    as_sets = {tuple(frozenset(s[k * size:(k + 1) * size]) for k in range(steps)) for s in splits}
    assert len(splits) == len(as_sets) == expected
    assert all(sorted(s) == list(range(count)) for s in splits)


def test_a_fedavg_e2_update_on_tiny_is_recovered_exactly_and_certified_by_replay(tmp_path):
    """The server derives (w_0 - w_2) / (2 lr) from a client's two local steps (FedAvg, E = 2, B = 1): no single
    gradient of the two sentences reproduces it, the replay of the two steps in the right order does."""
    settings = small(tmp_path, mode="fedavg", local_steps=2, batch_size=1, rounds=1, attack="span",
                     attack_clients="1", max_length=12, seed=6)  # 2 x 12 tokens: inside tiny's rank limit d = 32
    run_local(settings)
    [record] = read(tmp_path / "run" / "leakage.jsonl")
    assert record["rouge1"] == pytest.approx(1.0) and record["certified"] == [True, True]
    assert sorted(record["reconstruction"]) == sorted(record["reference"])


def _tiny_and_pii(seed: int = 0):
    from fedsim import task
    from fedsim.core.models import build_model
    from fedsim.core.text import load_tokenizer

    tok = load_tokenizer("bert-base-uncased")
    data = task.load_split("pii", "train", "", 0)
    model = build_model("tiny", "uniform:0.1", num_labels=data.num_labels, vocab_size=len(tok), seed=seed).eval()
    return model, tok, data


def _fedavg_observation(steps: int = 2, lr: float = 0.1):
    """A tiny model, ``steps`` pii sentences, one per local step, and the update the server derives from them."""
    from adversary.case import observe_fedavg
    from fedsim import task

    model, tok, data = _tiny_and_pii()
    batches = [task.batch_of(data, [i], "bert-base-uncased", 24) for i in range(steps)]
    observation, truth = observe_fedavg(model, batches, tok, lr)
    return observation, truth.token_ids, truth.labels


def test_replay_certifies_the_right_split_and_finds_it_from_a_wrong_order():
    observation, ids, labels = _fedavg_observation()
    right = update_distance(observation, replayed_update(observation, ids, labels))
    swapped = update_distance(observation, replayed_update(observation, ids[::-1], labels[::-1]))
    assert right < 1e-9 < swapped  # the order of the steps matters, and the right one reproduces the update
    result = certify_by_replay(observation, ids[::-1], labels[::-1])
    assert result.passed and result.token_ids == ids and result.labels == labels


def test_replay_does_not_certify_a_wrong_sentence_or_a_fedsgd_observation():
    observation, ids, labels = _fedavg_observation()
    wrong = [ids[0], ids[1][:-2] + ids[1][-1:]]  # one token dropped from the second sentence
    result = certify_by_replay(observation, wrong, labels)
    assert not result.passed and result.replays >= 2 and result.distance > result.info["replay_tolerance"]
    import dataclasses

    fedsgd = dataclasses.replace(observation, local_steps=1, learning_rate=None)
    assert not certify_by_replay(fedsgd, ids, labels).passed


def _fedavg_batches_observation(seed: int, steps: int = 2, size: int = 2, lr: float = 1.0, max_length: int = 7):
    """A tiny model and ``steps`` local batches of ``size`` pii sentences; the update the server derives (with the
    rounding bound it publishes), the batches, and the client's weights after its first step."""
    import copy

    from adversary.case import observe_fedavg
    from fedsim import task
    from fedsim.core.train import batch_gradients, sgd_step

    model, tok, data = _tiny_and_pii(seed)
    first = seed * steps * size
    batches = [task.batch_of(data, list(range(first + k * size, first + (k + 1) * size)), "bert-base-uncased",
                             max_length) for k in range(steps)]
    after_one = copy.deepcopy(model)
    sgd_step(after_one, batch_gradients(after_one, batches[0]), lr)
    observation, _ = observe_fedavg(model, batches, tok, lr)
    return observation, batches, after_one


def _sequences(batch):
    return [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def test_peeling_the_first_step_leaves_the_second_steps_gradient_at_the_drifted_weights():
    from adversary.peel import peel_first_step
    from fedsim.core.train import batch_gradients

    observation, batches, after_one = _fedavg_batches_observation(seed=0)
    rest = peel_first_step(observation, _sequences(batches[0]), batches[0]["labels"].tolist())
    assert rest.local_steps == 1 and rest.batch_size == 2 and rest.learning_rate is None
    assert all(bool((p == q).all()) for p, q in zip(rest.model.parameters(), after_one.parameters()))
    truth = batch_gradients(after_one, batches[1])
    diff = sum(float((truth[n].double() - rest.gradients[n].double()).square().sum()) for n in truth) ** 0.5
    norm = sum(float(truth[n].double().square().sum()) for n in truth) ** 0.5
    assert diff / norm < 1e-5
    wrong = peel_first_step(observation, _sequences(batches[0]), [1 - y for y in batches[0]["labels"].tolist()])
    off = sum(float((truth[n].double() - wrong.gradients[n].double()).square().sum()) for n in truth) ** 0.5
    assert off / norm > 1e-3  # wrong labels for step 1 leave a residual that is not step 2's gradient


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_fedavg_e2_b2_update_on_tiny_is_recovered_exactly_and_certified(seed):
    """Issue #11, FedAvg: 4 sentences in 2 drifting local steps of 2. The later step's inputs sit off the global
    weights' spans (drift_cut), and it is recovered by peeling the first step off (peel_first_step)."""
    from adversary.options import Budget
    from adversary.registry import get_attack

    observation, batches, _ = _fedavg_batches_observation(seed)
    rec = get_attack("span")(observation, Budget(iterations=500, seconds=60))
    truth = [ids for batch in batches for ids in _sequences(batch)]
    labels = [y for batch in batches for y in batch["labels"].tolist()]
    assert sorted(rec.token_ids) == sorted(truth) and rec.certified == [True] * 4
    assert sorted(zip(map(tuple, rec.token_ids), rec.labels)) == sorted(zip(map(tuple, truth), labels))


def test_drift_cut_keeps_each_positions_closest_and_cuts_at_a_gap_below_its_ceiling():
    from adversary.span.subspace import DRIFT_CEILING, drift_cut

    found = [[(1, 0, 1e-3)], [(2, 0, 5e-4), (3, 0, 1.2e-3), (4, 0, 4e-3), (5, 0, 0.3)]]
    kept, cut, gap = drift_cut(found)
    assert [[t for t, _, _ in row] for row in kept] == [[1], [2, 3]] and 1.2e-3 < cut < 4e-3
    assert gap == pytest.approx(4e-3 / 1.2e-3)
    far = [[(1, 0, 0.04)], [(2, 0, 1e-4), (3, 0, 1e-3)]]  # the first position's only member is never dropped
    assert drift_cut(far)[0] == far
    # A [CLS]-like position whose wrong candidates sit far above everything (0.09 -> 0.37 is the widest gap) does
    # not set the cut: without a 2x gap below the ceiling, it is the ceiling.
    cls = [[(1, 0, 1e-3), (9, 0, 0.37)], [(2, 0, 1e-3), (3, 0, 1.5e-3), (4, 0, 0.09)]]
    kept, cut, gap = drift_cut(cls)
    assert [[t for t, _, _ in row] for row in kept] == [[1], [2, 3]]
    assert cut == pytest.approx(DRIFT_CEILING * 1e-3) and gap == pytest.approx(1.5)


def test_sentences_sharing_most_words_are_peeled_whatever_the_attack_seed():
    """Two steps of one sentence each that share most words (FedAvg E = 2): many lengths look possible, and the
    linker's random starts must go to the lengths whose descents come closest to the span. With starts spread over
    every length, attack seed 1 found no first-step sentence within this budget (128 descents)."""
    from adversary.case import observe_fedavg
    from adversary.options import Budget
    from adversary.registry import run_attack
    from fedsim.core.text import make_batch

    model, tok, _ = _tiny_and_pii()
    texts = ["As you eat the most, you want the least.", "The more you would want, the less you would eat."]
    observation, truth = observe_fedavg(model, [make_batch(tok, [texts[0]], [0]), make_batch(tok, [texts[1]], [1])],
                                        tok, 1.0)
    for seed in range(4):
        rec = run_attack("span", observation, Budget(128, 30.0), seed)
        assert rec.token_ids == truth.token_ids and rec.labels == truth.labels and all(rec.certified), (seed, rec.texts)


def test_best_certifies_an_optimisation_attacks_exact_fedavg_answer_by_replay():
    """An exact answer that came from an optimisation attack (here: an attack that returns the client's sentences,
    span given no descents) fails the single-gradient test on a FedAvg update, E = 2 drifting steps; best replays
    the client's steps and certifies it. The reference frontier's round 1 returned its 4 sentences exactly and
    reported them as a guess. A sentence short of one token is not certified."""
    from adversary.case import Reconstruction
    from adversary.distance import candidate_distance, passes
    from adversary.options import Budget
    from adversary.registry import ATTACKS, register, run_attack

    observation, batches, _ = _fedavg_batches_observation(seed=1)
    truth = [q for b in batches for q in _sequences(b)]
    labels = [int(y) for b in batches for y in b["labels"]]
    answers = {"exact": truth[2:] + truth[:2],  # in the wrong step order: the replay must find the split
               "short": [q[:-2] + q[-1:] for q in truth[2:] + truth[:2]]}

    def oracle(kind):
        return lambda obs, budget, seed, options: Reconstruction([str(q) for q in answers[kind]], answers[kind],
                                                                 labels[2:] + labels[:2])

    try:
        for kind in answers:
            register(f"_oracle_{kind}")(oracle(kind))
        assert not passes(observation, truth, candidate_distance(observation, truth, labels))  # no single gradient
        options = {"attacks": ("_oracle_exact",), "span": {"max_descents": 0}}
        rec = run_attack("best", observation, Budget(10, 30.0), 0, options)
        assert rec.info["best_attack"] == "_oracle_exact" and all(rec.certified)
        assert rec.token_ids == truth and rec.labels == labels and rec.texts == [str(q) for q in truth]
        rec = run_attack("best", observation, Budget(10, 30.0), 0, {**options, "attacks": ("_oracle_short",)})
        assert rec.info["best_attack"] == "_oracle_short" and not any(rec.certified)
    finally:
        for kind in answers:
            ATTACKS.pop(f"_oracle_{kind}", None)


def test_the_fedavg_peel_starts_from_the_first_steps_sequences_when_nothing_else_was_linked():
    """A tight drift_cut can leave the linker only the first step's sequences, the rest of the answer empty: that is
    all the peel needs (the empty slots used to stop it, and E = 5 tinybert4 updates went uncertified)."""
    import time

    from adversary.options import Budget
    from adversary.span.attack import SpanOptions, peel_steps

    observation, batches, _ = _fedavg_batches_observation(seed=0)
    first, labels = _sequences(batches[0]), batches[0]["labels"].tolist()
    found = first + [[] for _ in range(observation.batch_size - len(first))]
    peeled = peel_steps(observation, found, labels + [0, 0], [1e-4, 2e-4], Budget(500, 60), time.perf_counter(), 0,
                        SpanOptions())
    assert peeled is not None
    token_ids, recovered = peeled
    assert token_ids[:2] == first and sorted(token_ids[2:]) == sorted(_sequences(batches[1]))
    assert recovered[:2] == labels
