"""Issue #11: certified-or-guessed reconstructions and metrics that do not flatter a long guess, a lucky pairing
or a failed job. Hand-made cases, a fake attacker, the Recorder's summary, and the sigma = 1e-9 regression."""

import inspect

import pytest

from adversary.case import GroundTruth, Reconstruction, observe
from adversary.metrics import random_pairing_rouge1, rouge1_matrix, score, special_ids_of, token_f1, token_precision
from fedsim import attack_actor
from fedsim.attack_actor import InlineAttacker, Job, attack_job, score_result

CLS, SEP = 101, 102


def test_a_long_guess_recovers_everything_but_is_not_precise():
    reference = list(range(1000, 1012))  # 12 content tokens
    guess = reference + [7] * 388  # the right words followed by 388 junk tokens
    truth = GroundTruth(["a b c"], [[CLS, *reference, SEP]], [1])
    rec = Reconstruction(["a b c " + "x " * 388], [[CLS, *guess, SEP]], [1])
    s = score(rec, truth, special_ids={CLS, SEP})
    assert s["recover_rate"] == 1.0
    assert s["token_precision"] == pytest.approx(12 / 400)
    assert s["token_f1"] == pytest.approx(2 * (12 / 400) / (1 + 12 / 400)) and s["token_f1"] < 0.1
    assert token_precision([1, 2], []) == 0.0 and token_f1([1, 2], [1, 2]) == 1.0


def test_random_pairing_is_the_mean_of_the_rouge_matrix_2x2():
    refs, recs = ["the cat sat", "a dog ran"], ["a dog ran", "the cat sat"]
    matrix = rouge1_matrix(refs, recs)
    assert matrix.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert random_pairing_rouge1(matrix) == 0.5  # the two pairings (1.0 and 0.0), equally likely
    truth = GroundTruth(refs, [[CLS, 5, 6, 7, SEP], [CLS, 8, 9, 10, SEP]], [0, 1])
    s = score(Reconstruction(recs, [[CLS, 8, 9, 10, SEP], [CLS, 5, 6, 7, SEP]], [1, 0]), truth, {CLS, SEP})
    assert s["rouge1"] == 1.0 and s["rouge1_random_pairing"] == 0.5
    # 2 references, 1 reconstruction: it meets "a b" half the time, the unpaired reference scores 0
    assert random_pairing_rouge1(rouge1_matrix(["a b", "c d"], ["a b"])) == pytest.approx(0.25)


def test_label_correct_only_where_paired_with_overlap():
    truth = GroundTruth(["the cat sat", "a dog ran"], [[CLS, 5, SEP], [CLS, 6, SEP]], [0, 1])
    rec = Reconstruction(["the cat sat", "zz qq"], [[CLS, 5, SEP], [CLS, 9, SEP]], [0, 0])
    s = score(rec, truth, {CLS, SEP})
    assert s["label_correct"] == 1.0  # the second pair has no overlap: not counted, not a wrong label
    none = score(Reconstruction(["zz"], [[CLS, 9, SEP]], [1]), GroundTruth(["a b"], [[CLS, 5, SEP]], [1]), {CLS, SEP})
    assert none["label_correct"] is None
    unpaired = score(Reconstruction(["the cat sat"], [[CLS, 5, SEP]], [0]), truth, {CLS, SEP})
    assert unpaired["label_correct"] == 1.0  # the unpaired reference is skipped


def test_special_ids_come_from_the_tokenizer_not_the_attack(tokenizer):
    assert special_ids_of(tokenizer) == frozenset(tokenizer.all_special_ids)
    truth = GroundTruth(["a"], [[CLS, 5, 6, SEP]], [0])
    rec = Reconstruction(["a"], [[CLS, 5, 6, SEP]], [0], info={"special_ids": [5]})  # a lying attack
    assert score(rec, truth, special_ids_of(tokenizer))["recover_rate"] == 1.0
    assert score(rec, truth, special_ids_of(tokenizer))["token_precision"] == 1.0


def test_the_actor_never_receives_ground_truth(monkeypatch, tiny, tokenizer):
    assert list(inspect.signature(attack_job).parameters) == ["job", "observation"]
    params = [p for p in inspect.signature(attack_actor._AttackWorker.run).parameters if not p.startswith("_ray")]
    assert params == ["self", "job", "observation"]  # Ray may add its own tracing argument once it is initialised
    from fedsim.core.text import make_batch

    observation, truth = observe(tiny, make_batch(tokenizer, ["the cat sat."], [1]), tokenizer)
    seen = []

    def fake_attack_job(job, *args, **kwargs):
        seen.append(args + tuple(kwargs.values()))
        return {"round": job.round, "client": job.client, "method": job.method, "seconds": 0.0,
                "result": Reconstruction(list(truth.texts), [list(q) for q in truth.token_ids], [1])}

    monkeypatch.setattr(attack_actor, "attack_job", fake_attack_job)
    attacker = InlineAttacker()
    attacker.submit(Job(1, 0, "span", 1, 0), observation, truth)
    (record,) = attacker.poll()
    assert not any(isinstance(a, GroundTruth) for call in seen for a in call)  # the attack side got no truth
    assert record["rouge1"] == 1.0 and record["reference"] == truth.texts and record["certified"] == [False]
    failed = score_result({"round": 1, "client": 2, "method": "tag", "error": "boom", "seconds": 1.0}, truth, None)
    assert failed["error"] == "boom" and "rouge1" not in failed


def test_summary_counts_failures(tmp_path):
    from fedsim.recorder import Recorder, describe
    from fedsim.settings import Settings

    recorder = Recorder(Settings(out=str(tmp_path), attack="tag"), echo=lambda line: None)
    ok = {"round": 1, "client": 0, "method": "tag", "reference": ["a"], "reconstruction": ["a"], "rouge1": 0.8,
          "rouge2": 0.5, "rougeL": 0.8, "recover_rate": 1.0, "token_accuracy": 1.0, "label_correct": None,
          "token_precision": 0.5, "token_f1": 0.6, "rouge1_random_pairing": 0.8, "certified_share": 1.0,
          "certified": [True], "seconds": 1.0}
    recorder.leakage([ok, {"round": 1, "client": 1, "method": "tag", "reference": None, "reconstruction": None,
                           "error": "boom", "seconds": None}])
    recorder._write_summary()
    summary = recorder.summary
    assert summary["attacks_failed"] == 1 and summary["attacks"] == {"scored": 1, "errors": 1}
    assert summary["rouge1"] == 0.8 and summary["rouge1_with_failures_as_zero"] == pytest.approx(0.4)
    assert summary["label_correct"] is None and summary["sequences_certified"] == 1
    text = describe(summary, recorder.leaks)
    assert "counting the 1 failed attack(s) as 0: 0.40" in text


@pytest.mark.usefixtures("one_thread")
def test_span_does_not_certify_junk_under_tiny_noise(tiny, tokenizer):
    """Regression (sigma = 1e-9): every position-embedding row is non-zero, the B = 1 span read ~500 positions and
    reported its junk as passing; best stopped there. Now span's answer must reproduce the gradient, and best
    certifies only an answer that does."""
    from adversary.distance import reproduces
    from adversary.options import Budget
    from adversary.registry import run_attack
    from defenses import build_gradient_fn
    from fedsim.core.text import make_batch

    text = "anna smith from denver complained that the transfer of 5090 dollars failed on april 13."
    observation, truth = observe(tiny, make_batch(tokenizer, [text], [1]), tokenizer,
                                 gradient_fn=build_gradient_fn(["noise:sigma=1e-9"], generator=0),
                                 public_lengths=False)
    span = run_attack("span", observation, Budget(2, 5.0), seed=0)  # the membership test stops at 5 s
    exact, _ = reproduces(observation, span.token_ids, span.labels)
    assert len(span.token_ids[0]) > 2 * len(truth.token_ids[0])  # the junk is still read...
    assert not exact and not span.info["span_check_passed"] and span.certified == [False]  # ...never certified
    best = run_attack("best", observation, Budget(5, 20.0), seed=0, options={"attacks": ("lamp",)})
    assert best.info["best_attack"] != "span" or exact  # the yardstick chose, not span's check
    assert "lamp" in best.info["candidate_distances"]
    assert reproduces(observation, truth.token_ids, truth.labels)[0]  # the truth would have been certified
    # LAMP, with the length read where the position rows meet the noise floor (not ~500), finds the sentence in 5
    # iterations; certified because it reproduces the gradient, the one test that may say so
    assert best.token_ids == truth.token_ids and best.certified == [True]
    assert best.certified == [reproduces(observation, best.token_ids, best.labels)[0]]


def test_a_leakage_record_says_why_the_exact_path_did_not_certify():
    truth = GroundTruth(["a b"], [[CLS, 5, 6, SEP]], [0])
    guessed = Reconstruction(["a b"], [[CLS, 5, 6, SEP]], [0],
                             info={"over_rank_limit": True, "reason": "past the rank limit: 39 tokens > hidden size 32"})
    record = score_result({"round": 1, "client": 0, "method": "best", "result": guessed, "seconds": 1.0}, truth, None)
    assert record["certified"] == [False] and record["over_rank_limit"] is True
    assert record["why_not_certified"].startswith("past the rank limit")
    certified = Reconstruction(["a b"], [[CLS, 5, 6, SEP]], [0], certified=[True], info={"over_rank_limit": False})
    record = score_result({"round": 1, "client": 0, "method": "span", "result": certified, "seconds": 1.0}, truth, None)
    assert "why_not_certified" not in record and record["over_rank_limit"] is False
