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


def _fedavg_observation(steps: int = 2, lr: float = 0.1):
    """A tiny model, ``steps`` pii sentences, one per local step, and the update the server derives from them."""
    import copy

    from adversary.case import Observation
    from fedsim import task
    from fedsim.core.models import build_model
    from fedsim.core.text import load_tokenizer
    from fedsim.core.train import batch_gradients

    tok = load_tokenizer("bert-base-uncased")
    data = task.load_split("pii", "train", "", 0)
    model = build_model("tiny", "uniform:0.1", num_labels=data.num_labels, vocab_size=len(tok), seed=0).eval()
    batches = [task.batch_of(data, [i], "bert-base-uncased", 24) for i in range(steps)]
    client = copy.deepcopy(model)
    task.local_train(client, batches, lr, batch_gradients)
    before, after = dict(model.named_parameters()), dict(client.named_parameters())
    update = {n: ((before[n].double() - after[n].double()) / (lr * steps)).float().detach() for n in before}
    observation = Observation(model=model, gradients=update, batch_size=steps, tokenizer=tok, local_steps=steps,
                              learning_rate=lr)
    ids = [b["input_ids"][0][b["attention_mask"][0].bool()].tolist() for b in batches]
    return observation, ids, [int(b["labels"][0]) for b in batches]


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
