"""Metrics against values computed by hand."""

import pytest

from adversary.case import GroundTruth, Reconstruction
from adversary.metrics import assign, positional_accuracy, recover_rate, rouge, score, token_overlap

CLS, SEP = 101, 102


def test_rouge_by_hand():
    r = rouge("the cat sat on the mat", "the cat sat")
    assert r["rouge1"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P = 3/3, R = 3/6
    assert r["rouge2"] == pytest.approx(2 * 1.0 * 0.4 / 1.4)  # 2 of 5 reference bigrams, both candidate bigrams hit
    assert r["rougeL"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert rouge("the cat sat", "")["rouge1"] == 0.0


def test_token_overlap_counts_a_multiset():
    assert token_overlap([5, 5, 6], [5, 6, 6]) == pytest.approx(2 / 3)
    assert token_overlap([5, 6, 7, 8], [8, 7, 6, 5]) == 1.0
    assert positional_accuracy([5, 6, 7, 8], [8, 6, 7, 5]) == 0.5


def test_recover_rate_is_the_best_checkpoint():
    guesses = [[5, 9, 9, 9], [5, 6, 9, 9], [9, 9, 9, 9], [9, 9, 9, 8]]
    assert recover_rate([5, 6, 7, 8], guesses) == 0.5


def test_score_single_sentence_by_hand():
    truth = GroundTruth(["the cat sat on the mat"], [[CLS, 5, 6, 7, 8, 5, 9, SEP]], [1])
    rec = Reconstruction(["the cat sat"], [[CLS, 5, 6, 7, 1, 1, 1, SEP]], [0],
                         trajectory=[[[CLS, 5, 6, 7, 8, 1, 1, SEP]], [[CLS, 1, 1, 1, 1, 1, 1, SEP]]],
                         info={"analytic_labels": [1]})
    s = score(rec, truth, special_ids={CLS, SEP})
    assert s["recover_rate"] == pytest.approx(4 / 6)  # checkpoint 1: 5, 6, 7, 8 of the reference's six tokens
    assert s["token_accuracy"] == pytest.approx(3 / 6)  # final guess: 5, 6, 7 in place
    assert s["rouge1"] == pytest.approx(2 / 3)
    assert s["label_correct"] == 0.0 and s["analytic_label_correct"] == 1.0
    assert s["assignment"] == [0]


def test_special_tokens_do_not_count():
    truth = GroundTruth(["a b"], [[CLS, 5, 6, SEP]], [0])
    rec = Reconstruction(["x y"], [[CLS, 7, 8, SEP]], [0])
    assert score(rec, truth, special_ids={CLS, SEP})["recover_rate"] == 0.0
    assert score(rec, truth, special_ids=set())["recover_rate"] == 0.5  # [CLS] and [SEP] would count otherwise


def test_batch_pairs_by_best_rouge1_assignment():
    truth = GroundTruth(["the cat sat", "a dog ran fast"], [[CLS, 5, 6, 7, SEP], [CLS, 10, 11, 12, 13, SEP]], [0, 1])
    rec = Reconstruction(["a dog ran slow", "the cat sat"], [[CLS, 10, 11, 12, 99, SEP], [CLS, 5, 6, 7, SEP]], [1, 0],
                         trajectory=[[[CLS, 10, 11, 12, 99, SEP], [CLS, 5, 6, 7, SEP]]],
                         info={"analytic_labels": [1, 1]})
    s = score(rec, truth, special_ids={CLS, SEP})
    assert s["assignment"] == [1, 0]
    assert s["rouge1"] == pytest.approx((1.0 + 0.75) / 2)
    assert s["recover_rate"] == pytest.approx((1.0 + 0.75) / 2)
    assert s["token_accuracy"] == pytest.approx((1.0 + 0.75) / 2)
    assert s["label_correct"] == 1.0  # labels follow the pairing, not the batch order
    assert s["analytic_label_correct"] == 0.5  # multiset {1, 1} against {0, 1}


def test_assignment_with_fewer_reconstructions():
    assert assign(["a b", "c d", "e f"], ["c d"]) == [None, 0, None]
    truth = GroundTruth(["a b", "c d"], [[CLS, 1, 2, SEP], [CLS, 3, 4, SEP]], [0, 0])
    rec = Reconstruction(["c d"], [[CLS, 3, 4, SEP]], [0])
    assert score(rec, truth, special_ids={CLS, SEP})["rouge1"] == 0.5  # the unpaired reference scores 0


def test_pairing_breaks_rouge1_ties_by_word_order():
    """Same words, another order: ROUGE-1 ties both ways; an exact answer must be paired with itself."""
    from adversary.case import GroundTruth, Reconstruction
    from adversary.metrics import score

    a, b = "the cat saw a dog", "a dog saw the cat"
    truth = GroundTruth([a, b], [[101, 1, 102], [101, 2, 102]], [0, 1])
    result = score(Reconstruction([b, a], [[101, 2, 102], [101, 1, 102]], [1, 0]), truth)
    assert result["assignment"] == [1, 0] and result["rouge2"] == 1.0 and result["rougeL"] == 1.0
