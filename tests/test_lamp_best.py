"""`lamp` and `best` on the 2-layer `tiny` model: reconstruction, the discrete moves, the shared yardstick that
`best` chooses by, its fallback when the gradient is noised, and both through `fedleak attack`."""

import json
import math
import random

import pytest
import torch

from adversary.case import observe
from adversary.distance import LayerCosine, candidate_distance as gradient_distance
from adversary.engine import GradientMatcher, MatchConfig, attack_mode
from adversary.lamp import structural_zeros
from adversary.moves import MOVES, DiscreteMoves, propose
from adversary.metrics import score
from adversary.options import Budget
from adversary.registry import run_attack
from fedsim.cli import main
from fedsim.core.text import make_batch

SENTENCE = "the cat sat on the mat."
TINY = ["--model", "tiny", "--init", "uniform:0.1", "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clean(tiny, tokenizer):
    return observe(tiny, make_batch(tokenizer, [SENTENCE], [1]), tokenizer)


@pytest.fixture(scope="module")
def noised(tiny, tokenizer):
    from defenses import build_gradient_fn

    return observe(tiny, make_batch(tokenizer, [SENTENCE], [1]), tokenizer,
                   gradient_fn=build_gradient_fn(["noise:sigma=1e-4"], generator=0))


def test_moves_are_reorderings():
    rng = random.Random(0)
    for kind in MOVES[:4]:
        for n in (2, 3, 9):
            for _ in range(20):
                assert sorted(propose(n, kind, rng)) == list(range(n))
    assert propose(5, "prefix", random.Random(1)) != list(range(5))


def test_true_tokens_have_zero_layer_cosine_and_a_swap_does_not(clean, tokenizer):
    observation, truth = clean
    cosine = LayerCosine()
    matcher = GradientMatcher(observation, MatchConfig(distance=cosine, labels="analytic"), seed=0)
    moves = DiscreteMoves(every=1, candidates=0, start=1, last=1, seed=0)
    ids = torch.tensor([truth.token_ids[0]])
    with attack_mode(matcher.model):
        zeros = structural_zeros(matcher)
        cosine.weights = (~zeros).float()
        exact = moves.score(matcher, ids)
        swapped = ids.clone()
        swapped[0, [1, 2]] = swapped[0, [2, 1]]
        wrong = moves.score(matcher, swapped)
    names = [n for n, z in zip(matcher.names, zeros.tolist()) if z]
    assert names and all(n.endswith("attention.self.key.bias") for n in names)  # zero by construction
    assert exact < 1e-6 < wrong


def test_candidate_distance_ranks_the_truth_first(clean):
    observation, truth = clean
    exact = gradient_distance(observation, truth.token_ids, truth.labels)
    reordered = [truth.token_ids[0][:1] + truth.token_ids[0][1:-1][::-1] + truth.token_ids[0][-1:]]
    assert exact < 1e-6 < gradient_distance(observation, reordered, truth.labels)
    assert gradient_distance(observation, truth.token_ids, [1 - truth.labels[0]]) > 1e-3
    assert math.isinf(gradient_distance(observation, [[]], truth.labels))
    assert math.isinf(gradient_distance(observation, truth.token_ids * 2, truth.labels * 2))


def test_lamp_reconstructs_a_known_sentence(clean, tokenizer):
    observation, truth = clean
    rec = run_attack("lamp", observation, Budget(300), seed=0)
    scores = score(rec, truth)
    assert scores["rouge1"] >= 0.9 and scores["rouge2"] >= 0.75, rec.texts
    assert scores["label_correct"] == 1.0
    content = set(truth.token_ids[0][1:-1])
    assert rec.info["vocabulary_restricted"] and rec.info["vocabulary_size"] == len(content)
    assert set(rec.token_ids[0][1:-1]) <= content  # decoding kept to the token set
    assert rec.info["discrete_steps"] >= 5 and rec.info["discrete_evaluations"] > 0
    assert rec.info["language_model_prior"] is False
    assert rec.iterations == 300 and len(rec.loss_curve) == 300


def test_best_returns_span_exactly_on_a_clean_gradient(clean):
    observation, truth = clean
    rec = run_attack("best", observation, Budget(50), seed=0)
    assert rec.info["best_attack"] == "span" and rec.info["span_check_passed"]
    assert rec.token_ids == truth.token_ids and rec.labels == truth.labels
    assert list(rec.info["candidate_distances"]) == ["span"]  # nothing else ran
    assert rec.iterations == 0 and rec.gradient_distance < 1e-6


def test_best_falls_back_to_optimisation_under_noise(noised):
    observation, truth = noised
    rec = run_attack("best", observation, Budget(40), seed=0, options={"lamp": {"candidates": 10}})
    info = rec.info
    assert not info["span_check_passed"]
    assert set(info["candidate_distances"]) == {"tag", "lamp"}  # span's check failed: no answer from it
    assert info["best_attack"] == min(info["candidate_distances"], key=info["candidate_distances"].get)
    assert rec.gradient_distance == info["candidate_distances"][info["best_attack"]]
    assert rec.gradient_distance == pytest.approx(gradient_distance(observation, rec.token_ids, rec.labels))
    assert rec.iterations == 80 and info["iterations_per_attack"] == {"tag": 40, "lamp": 40}
    assert rec.texts == info["candidate_texts"][info["best_attack"]]
    split = run_attack("best", observation, Budget(40), seed=0,
                       options={"attacks": ("tag",), "budget_split": "split"})
    assert split.info["iterations_per_attack"] == {"tag": 40} and split.info["best_attack"] == "tag"


def read(out):
    with open(out / "results.jsonl") as fh:
        records = [json.loads(line) for line in fh]
    with open(out / "summary.json") as fh:
        return records, json.load(fh)


def test_lamp_and_best_through_the_cli(tmp_path):
    out = tmp_path / "lamp"
    assert main(["attack", *TINY, "--dataset", "pii", "--num-samples", "1", "--method", "lamp",
                 "--iterations", "60", "--seed", "0", "--out", str(out)]) == 0
    records, summary = read(out)
    assert len(records) == 1 and records[0]["method"] == "lamp" == summary["method"]
    assert records[0]["iterations"] == 60 and 0.0 <= records[0]["rouge1"] <= 1.0
    out = tmp_path / "best"
    assert main(["attack", *TINY, "--dataset", "pii", "--num-samples", "1", "--method", "best",
                 "--iterations", "1000", "--seed", "0", "--out", str(out)]) == 0
    records, summary = read(out)
    assert records[0]["method"] == "best" and records[0]["rouge1"] == 1.0 and records[0]["iterations"] == 0
    out = tmp_path / "best-noised"
    assert main(["attack", *TINY, "--dataset", "pii", "--num-samples", "1", "--method", "best",
                 "--defense", "noise:sigma=1e-4", "--iterations", "20", "--seed", "0", "--out", str(out)]) == 0
    records, summary = read(out)
    assert records[0]["iterations"] == 40 and records[0]["defenses"] == ["noise:sigma=1e-4"]


def test_noise_level_and_the_tokens_above_it(clean, noised):
    from adversary.noise import noise_level, noisy_token_set, signal_weights

    observation, truth = noised
    sigma = noise_level(observation)
    assert sigma == pytest.approx(1e-4, rel=0.05)
    assert set(noisy_token_set(observation, sigma).tolist()) == set(truth.token_ids[0])
    assert noise_level(clean[0]) == 0.0 and noisy_token_set(clean[0], 0.0) is None
    weights = signal_weights(list(observation.gradients.values()), sigma)
    assert bool((weights >= 0).all() and (weights <= 1).all()) and float(weights.min()) < 0.5 < float(weights.max())
    rec = run_attack("lamp", observation, Budget(30), seed=0, options={"candidates": 8})
    assert rec.info["noise_level"] == pytest.approx(sigma) and rec.info["distance"] == "l2"
    assert rec.info["vocabulary_restricted"] and set(rec.token_ids[0]) <= set(truth.token_ids[0])


def test_best_judges_a_batch_with_its_labels_corrected_so_good_text_is_not_hidden_by_wrong_labels(tiny, tokenizer):
    from adversary.best import _judge
    from adversary.case import Reconstruction

    sentences, labels = ["the cat sat on the mat.", "a dog ran home.", "birds sing loudly.", "we like tea."], [1, 0, 0, 1]
    observation, truth = observe(tiny, make_batch(tokenizer, sentences, labels), tokenizer)
    wrong = [1 - y for y in labels]
    rec = Reconstruction(list(truth.texts), [list(q) for q in truth.token_ids], wrong)
    assert gradient_distance(observation, rec.token_ids, wrong) > 1e-2  # wrong labels: far from reproducing it
    assert _judge(observation, rec) < 1e-4 and rec.labels == labels
