"""The gradient-matching engine, DLG, TAG and analytic label recovery on the 2-layer `tiny` model."""

import math

import pytest
import torch

from adversary.case import Observation, observe
from adversary.dummy import Decoder, allowed_tokens, build_layout
from adversary.engine import GradientMatcher, MatchConfig, infer_length
from adversary.labels import recover_labels
from adversary.metrics import score
from adversary.distance import GradientTarget, cosine_distance, squared_l2, tag_distance
from adversary.options import Budget
from adversary.registry import get_attack, run_attack
from fedsim.core.text import make_batch

SENTENCE = "the cat sat on the mat."

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_has_dlg_and_tag():
    assert get_attack("dlg") and get_attack("tag")


def test_tag_reconstructs_a_known_sentence(tiny, tokenizer):
    observation, truth = observe(tiny, make_batch(tokenizer, [SENTENCE], [1]), tokenizer)
    rec = run_attack("tag", observation, Budget(300), seed=0)
    scores = score(rec, truth)
    assert scores["rouge1"] >= 0.9, rec.texts
    assert scores["label_correct"] == 1.0
    assert rec.iterations == 300 and len(rec.loss_curve) == 300
    assert rec.loss_curve[-1] < rec.loss_curve[0] / 100
    assert rec.info["checkpoints"][-1] == 300 and len(rec.trajectory) == len(rec.info["checkpoints"]) == 30
    ids = rec.token_ids[0]  # [CLS] and [SEP] are public facts, fixed in place
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert len(ids) == len(truth.token_ids[0])


def test_the_length_of_a_noised_gradient_is_where_its_position_rows_fall_to_the_noise_floor(tiny, tokenizer):
    """Noise makes every position row non-zero: "the last non-zero row" read the whole table (512 positions), and
    the optimisation attacks then ran a dummy 40x too long on every noised update. Where the noise hides the
    signal, the server's own truncation length bounds the guess."""
    import dataclasses

    from defenses.gradient import build_gradient_fn

    batch = make_batch(tokenizer, [SENTENCE, "a dog barked at the moon tonight."], [0, 1])
    true = int(batch["attention_mask"].sum(1).max())
    noised, _ = observe(tiny, batch, tokenizer, gradient_fn=build_gradient_fn(["noise:sigma=1e-5"], generator=0),
                        public_lengths=False)
    table = int(tiny.config.max_position_embeddings)
    assert table > 4 * true and all(bool((g != 0).all()) for g in noised.gradients.values())
    assert infer_length(noised) == true
    drowned, _ = observe(tiny, batch, tokenizer, gradient_fn=build_gradient_fn(["noise:sigma=10"], generator=0),
                         public_lengths=False)
    assert infer_length(drowned) == table
    assert infer_length(dataclasses.replace(drowned, max_length=24)) == 24


def test_tag_reads_the_length_from_the_gradient(tiny, tokenizer):
    batch = make_batch(tokenizer, [SENTENCE], [0])
    observation, truth = observe(tiny, batch, tokenizer, public_lengths=False)
    assert observation.seq_lengths is None
    assert infer_length(observation) == len(truth.token_ids[0])
    rec = run_attack("tag", observation, Budget(300), seed=1)
    assert rec.info["lengths_inferred"] and rec.info["lengths"] == [len(truth.token_ids[0])]
    assert score(rec, truth)["rouge1"] >= 0.9, rec.texts


def test_dlg_runs_and_lowers_the_distance(tiny, tokenizer):
    observation, truth = observe(tiny, make_batch(tokenizer, [SENTENCE], [1]), tokenizer)
    rec = run_attack("dlg", observation, Budget(30), seed=0, options={"record_every": 5})
    assert rec.iterations == 30 and not rec.info["stopped_early"]
    assert all(math.isfinite(v) for v in rec.loss_curve) and min(rec.loss_curve) < rec.loss_curve[0]
    assert len(rec.token_ids[0]) == len(truth.token_ids[0]) and len(rec.trajectory) == 6
    assert rec.labels[0] in (0, 1)


def test_batch_of_two_with_padding(tiny, tokenizer):
    batch = make_batch(tokenizer, ["a short one.", SENTENCE + " and then some more words here."], [0, 1])
    observation, truth = observe(tiny, batch, tokenizer)
    rec = run_attack("tag", observation, Budget(20), seed=0, options={"snapshot_every": 10})
    assert [len(ids) for ids in rec.token_ids] == [len(ids) for ids in truth.token_ids]
    assert len(rec.labels) == 2 and len(rec.texts) == 2
    snaps = rec.info["dummy_snapshots"]
    assert rec.info["snapshot_iterations"] == [0, 10, 20]
    assert rec.info["free_positions"].sum() == sum(observation.seq_lengths) - 4  # [CLS] and [SEP] fixed
    assert snaps[0].shape == (2, max(observation.seq_lengths), tiny.config.hidden_size)


def test_same_seed_same_result_and_seed_matters(tiny, tokenizer):
    observation, _ = observe(tiny, make_batch(tokenizer, [SENTENCE], [1]), tokenizer)
    a = run_attack("tag", observation, Budget(15), seed=3)
    b = run_attack("tag", observation, Budget(15), seed=3)
    c = run_attack("tag", observation, Budget(15), seed=4)
    assert a.loss_curve == b.loss_curve and a.token_ids == b.token_ids
    assert a.loss_curve[0] != c.loss_curve[0]


@pytest.mark.parametrize("labels", [[0], [1], [0, 1, 1, 1], [0, 0, 0, 1, 1, 0]])
def test_analytic_label_recovery(tiny, tokenizer, labels):
    texts = [f"sentence number {i} is here." for i in range(len(labels))]
    observation, _ = observe(tiny, make_batch(tokenizer, texts, labels), tokenizer)
    assert recover_labels(observation) == sorted(labels)


def test_analytic_labels_need_a_classifier_bias(tiny, tokenizer):
    observation, _ = observe(tiny, make_batch(tokenizer, [SENTENCE], [1]), tokenizer)
    observation.gradients = {k: v for k, v in observation.gradients.items() if k != "classifier.bias"}
    assert recover_labels(observation) is None


def test_decoder_skips_zero_rows_and_specials(tokenizer):
    torch.manual_seed(0)
    weight = torch.randn(tokenizer.vocab_size, 8)
    weight[0] = 0  # [PAD] under random init
    allowed = allowed_tokens(tokenizer, weight)
    assert not allowed[0] and not allowed[tokenizer.cls_token_id] and not allowed[1]  # 1 is [unused0]
    decoder = Decoder(weight, allowed)
    targets = torch.tensor([2000, 3000, 7592])
    assert decoder(weight[targets].unsqueeze(0) * 3.0).tolist() == [targets.tolist()]  # cosine: scale-free
    assert decoder(torch.zeros(1, 2, 8)).flatten().tolist() != [0, 0]  # never NaN -> [PAD]
    assert Decoder(weight, allowed, "l2")(weight[targets].unsqueeze(0)).tolist() == [targets.tolist()]


def test_pair_layout_fixes_the_middle_sep(tokenizer):
    batch = make_batch(tokenizer, ["first part"], [0], pairs=["second one"])
    n = int(batch["attention_mask"].sum())
    layout = build_layout(tokenizer, [n], [batch["token_type_ids"][0].tolist()])
    fixed = torch.where(layout.free, -1, layout.fixed_ids)[0].tolist()
    expected = [t if t in (tokenizer.cls_token_id, tokenizer.sep_token_id) else -1
                for t in batch["input_ids"][0].tolist()]
    assert fixed == expected and layout.token_type_ids[0].tolist() == batch["token_type_ids"][0].tolist()


def test_distances_match_hand_computation():
    target = GradientTarget(["embeddings.x", "encoder.layer.0.w", "classifier.b"],
                            [torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 1.0]]), torch.tensor([3.0])], [0, 1, 2])
    dummy = [torch.tensor([2.0, 0.0]), torch.tensor([[0.0, 0.0]]), torch.tensor([3.0])]
    assert squared_l2(dummy, target).item() == pytest.approx(1 + 4 + 1)
    # TAG: alpha = 0.1 * (3 - depth) / 3 -> 0.1, 0.0667, 0.0333; L1 norms 3, 1, 0
    assert tag_distance(0.1)(dummy, target).item() == pytest.approx(6 + 0.1 * 3 + 0.1 * 2 / 3 * 1)
    flat_d, flat_t = torch.cat([d.flatten() for d in dummy]), torch.cat([t.flatten() for t in target.tensors])
    expected = 1 - torch.nn.functional.cosine_similarity(flat_d, flat_t, dim=0)
    assert cosine_distance(dummy, target).item() == pytest.approx(expected.item(), abs=1e-6)


def test_hand_written_backward_matches_autograd():
    torch.manual_seed(0)
    target = GradientTarget(["embeddings.x", "encoder.layer.0.w", "classifier.b"],
                            [torch.randn(4), torch.randn(3, 2), torch.randn(2)], [0, 1, 2])
    dummy = [torch.randn_like(t).requires_grad_() for t in target.tensors]
    alpha = [0.1, 0.1 * 2 / 3, 0.1 / 3]
    for fn, weights in ((squared_l2, [0.0] * 3), (tag_distance(0.1), alpha)):
        got = torch.autograd.grad(fn(dummy, target), dummy)
        reference = sum(((d - t) ** 2).sum() + a * (d - t).abs().sum()
                        for d, t, a in zip(dummy, target.tensors, weights))
        expected = torch.autograd.grad(reference, dummy)
        for g, e in zip(got, expected):
            assert torch.allclose(g, e, atol=1e-6)


def test_gradient_target_depths_from_names():
    names = ["bert.embeddings.position_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
             "bert.encoder.layer.1.output.dense.bias", "bert.pooler.dense.weight", "classifier.weight"]
    target = GradientTarget.from_gradients({n: torch.zeros(1) for n in names}, names)
    assert target.depths == [0, 1, 2, 3, 3]


def test_engine_rejects_mismatched_lengths(tiny, tokenizer):
    observation, _ = observe(tiny, make_batch(tokenizer, [SENTENCE], [1]), tokenizer)
    bad = Observation(tiny, observation.gradients, 1, tokenizer, seq_lengths=[5, 6])
    from fedsim.core.errors import UsageError
    with pytest.raises(UsageError):
        GradientMatcher(bad, MatchConfig())


def test_budget_seconds_stop_the_engine_early(tiny, tokenizer):
    observation, _ = observe(tiny, make_batch(tokenizer, [SENTENCE], [1]), tokenizer)
    rec = run_attack("tag", observation, Budget(100_000, seconds=0.3), seed=0)
    assert rec.info["deadline_reached"] and 1 <= rec.iterations < 100_000
    assert len(rec.loss_curve) == rec.iterations and rec.info["checkpoints"][-1] == rec.iterations
    assert not run_attack("tag", observation, Budget(3, seconds=60.0), seed=0).info["deadline_reached"]


def test_options_from_a_dict_name_what_they_reject():
    from adversary.attacks import TagOptions
    from adversary.best import BestOptions
    from adversary.lamp import LampOptions
    from adversary.registry import attack_options
    from fedsim.core.errors import UsageError

    assert attack_options("tag", {"lr": 1}) == TagOptions(lr=1.0)
    assert attack_options("best", {"lamp": {"candidates": 10}}) == \
        attack_options("best", {"per_attack": {"lamp": LampOptions(candidates=10)}}) == \
        BestOptions(per_attack={"lamp": LampOptions(candidates=10)})
    for name, overrides, words in (("tag", {"nope": 1}, ["nope", "accepted", "snapshot_every"]),
                                   ("tag", {"lr": "fast"}, ["lr", "a number"]),
                                   ("tag", {"scheme": "cubic"}, ["scheme", "linear, exp, flat"]),
                                   ("lamp", {"moves": ["swap", "jump"]}, ["moves", "prefix"]),
                                   ("best", {"lamp": {"candidates": "many"}}, ["candidates", "whole number"]),
                                   ("best", {"attacks": ["tag", "nope"]}, ["nope", "accepted"]),
                                   ("span", {"max_descents": 2.5}, ["max_descents"])):
        with pytest.raises(UsageError) as err:
            attack_options(name, overrides)
        assert all(w in str(err.value) for w in words), str(err.value)
    with pytest.raises(UsageError):
        Budget(-1)
    with pytest.raises(UsageError):
        get_attack("tag").options(LampOptions())  # another attack's options


def test_a_new_attack_is_a_function_an_options_class_and_register(tiny, tokenizer):
    from dataclasses import dataclass

    from adversary.case import Reconstruction
    from adversary.options import AttackOptions
    from adversary.registry import ATTACKS, register

    @dataclass(frozen=True)
    class EchoOptions(AttackOptions):
        text: str = "hello"

    @register("echo", EchoOptions)
    def echo(observation, budget: Budget, seed: int, options: EchoOptions) -> Reconstruction:
        return Reconstruction([options.text] * observation.batch_size, [[]], [seed], iterations=budget.iterations)

    try:
        observation, _ = observe(tiny, make_batch(tokenizer, [SENTENCE], [1]), tokenizer)
        rec = run_attack("echo", observation, Budget(7), seed=3, options={"text": "hi"})
        assert rec.texts == ["hi"] and rec.labels == [3] and rec.iterations == 7
        assert run_attack("echo", observation, Budget(1)).texts == ["hello"]
    finally:
        ATTACKS.pop("echo", None)
