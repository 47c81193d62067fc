"""Defenses: spec parsing, the transforms, DP-SGD against a slow loop, the accounting against dp-accounting, the
client's privacy report."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch
from dp_accounting import pld, rdp

from defenses import (REPORT_KEYS, Accountant, ClientPrivacy, Release, add_noise, build_gradient_fn, clip_update,
                      compute_epsilon, defend_update, format_defenses, global_norm, has_budget, mechanism,
                      parse_defenses, per_example_gradients, prune_update, resolve_budget, single_release_epsilon)
from defenses.specs import Clip, DpSgd, DpSgdBudget, Noise, NoiseBudget, Prune
from fedsim.core.errors import UsageError
from fedsim.core.models import build_model
from fedsim.core.text import load_tokenizer, make_batch
from fedsim.core.train import batch_gradients

TEXTS = ["a gripping, funny film", "dull", "the plot wanders and the acting is wooden throughout", "fine", "so bad"]
LABELS = [1, 0, 0, 1, 0]


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", "normal:0.02", seed=0)


@pytest.fixture(scope="module")
def batch():
    return make_batch(load_tokenizer(), TEXTS, LABELS)


def _update(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(40, 30, generator=g), "b": torch.randn(500, generator=g), "ids": torch.arange(7)}


# ---- specs -------------------------------------------------------------------------------------------------------

def test_specs_parse_compose_in_order():
    assert parse_defenses(["none"]) == () and parse_defenses([]) == () and parse_defenses(None) == ()
    assert parse_defenses(["clip:c=1", "noise:sigma=0.01"]) == (Clip(1.0), Noise(0.01))
    assert parse_defenses("dp:sigma=1.1,c=0.5+prune:p=0.9") == (DpSgd(1.1, 0.5), Prune(0.9))
    assert parse_defenses(["noise:sigma=1e+2+clip:c=1"]) == (Noise(100.0), Clip(1.0))  # '+' in a number stays
    assert parse_defenses(["DP: c=2, sigma=3"]) == (DpSgd(3.0, 2.0),)
    assert format_defenses(["clip:c=1", "noise:sigma=0.01"]) == "clip:c=1+noise:sigma=0.01"
    assert format_defenses([]) == "none"


@pytest.mark.parametrize("spec, named", [
    ("noise:sigma=-1", "-1"), ("zap:x=1", "zap:x=1"), ("noise", "sigma"), ("noise:sigma", "sigma"),
    ("noise:sigma=", "sigma"), ("noise:s=1", "'s'"), ("clip:c=0", "c must be > 0"), ("prune:p=1", "p must be in [0, 1)"),
    ("prune:p=-0.1", "-0.1"), ("dp:sigma=1", "c=C"), ("noise:sigma=nan", "nan"), ("noise:sigma=abc", "abc"),
    ("clip:c=1,c=2", "twice"), ("", "empty"), ("none:1", "none:1"), ("clip:c=1+dp:sigma=1,c=1", "first"),
])
def test_malformed_specs_raise_one_line_naming_the_value(spec, named):
    with pytest.raises(UsageError) as err:
        parse_defenses([spec])
    message = str(err.value)
    assert "\n" not in message and named in message and "accepted:" in message


def test_malformed_spec_is_rejected_by_every_entry_point():
    for call in (lambda: build_gradient_fn(["zap:x=1"]), lambda: defend_update(["noise:sigma=-1"], _update()),
                 lambda: mechanism(["prune:p=2"]), lambda: compute_epsilon(["noise"], 1, 1, 1)):
        with pytest.raises(UsageError):
            call()
    with pytest.raises(UsageError, match="per-example"):
        defend_update(["dp:sigma=1,c=1"], _update())


# ---- transforms --------------------------------------------------------------------------------------------------

def test_noise_has_the_right_std_and_is_seeded():
    zeros = {"w": torch.zeros(200_000)}
    noisy = add_noise(zeros, 0.3, torch.Generator().manual_seed(1))["w"]
    assert abs(noisy.std().item() - 0.3) < 0.003 and abs(noisy.mean().item()) < 0.003
    assert torch.count_nonzero(zeros["w"]) == 0  # input left alone
    again = defend_update(["noise:sigma=0.3"], zeros, generator=1)["w"]
    assert torch.equal(noisy, again)
    assert not torch.equal(again, defend_update(["noise:sigma=0.3"], zeros, generator=2)["w"])
    assert torch.equal(defend_update(["noise:sigma=1"], _update(), generator=3)["ids"], torch.arange(7))


def test_clipping_bounds_the_norm_and_leaves_small_updates_alone():
    big = _update()
    norm = global_norm(big).item()
    assert norm > 10
    clipped = clip_update(big, 2.0)
    assert global_norm(clipped).item() == pytest.approx(2.0, rel=1e-5)
    assert torch.allclose(clipped["a"] * norm / 2.0, big["a"], atol=1e-5)  # direction kept
    small = clip_update(big, 2 * norm)
    assert all(torch.equal(small[k], big[k]) for k in big)


def test_pruning_zeroes_exactly_the_smallest_fraction():
    update = _update()
    n = update["a"].numel() + update["b"].numel()
    pruned = prune_update(update, 0.3)
    flat_before = torch.cat([update["a"].flatten(), update["b"].flatten()])
    flat_after = torch.cat([pruned["a"].flatten(), pruned["b"].flatten()])
    dropped = flat_after == 0
    assert int(dropped.sum()) == int(0.3 * n)
    assert flat_before[dropped].abs().max() <= flat_before[~dropped].abs().min()
    assert torch.equal(flat_after[~dropped], flat_before[~dropped])
    ties = {"w": torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0])}  # ties: count stays exact
    assert int((prune_update(ties, 0.6)["w"] == 0).sum()) == 6
    assert torch.equal(prune_update(update, 0.0)["a"], update["a"])


# ---- gradient functions and DP-SGD -------------------------------------------------------------------------------

def test_no_defense_is_plain_batch_gradients(model, batch):
    assert build_gradient_fn([]) is batch_gradients and build_gradient_fn(["none"]) is batch_gradients
    plain = batch_gradients(model, batch)
    clipped = build_gradient_fn(["clip:c=0.01"])(model, batch)
    assert global_norm(clipped).item() == pytest.approx(0.01, rel=1e-5)
    assert all(torch.allclose(clipped[k], v * 0.01 / global_norm(plain), atol=1e-7) for k, v in plain.items())
    fn = build_gradient_fn(["noise:sigma=0.1"], generator=7)
    first, second = fn(model, batch), fn(model, batch)
    assert not torch.equal(first["classifier.weight"], second["classifier.weight"])  # fresh noise each step
    assert torch.equal(first["classifier.weight"], build_gradient_fn(["noise:sigma=0.1"], generator=7)(model, batch)
                       ["classifier.weight"])


def _slow_dp_reference(model, batch, c: float) -> dict[str, torch.Tensor]:
    """A Python loop over examples: each one's gradient, clipped to c, summed, divided by B."""
    size = batch["labels"].shape[0]
    total: dict[str, torch.Tensor] = {}
    for i in range(size):
        g = batch_gradients(model, {k: v[i:i + 1] for k, v in batch.items()})
        factor = min(1.0, c / global_norm(g).item())
        for k, v in g.items():
            total[k] = total.get(k, 0) + v * factor
    return {k: v / size for k, v in total.items()}


def test_dp_sgd_per_example_clipping_matches_a_slow_loop(model, batch):
    per_example = per_example_gradients(model, batch)
    norms = torch.linalg.vector_norm(torch.stack([g.flatten(1).norm(dim=1) for g in per_example.values()]), dim=0)
    c = float(norms.median())  # some examples clipped, some not
    assert (norms > c).any() and (norms < c).any()
    mean = batch_gradients(model, batch)
    assert all(torch.allclose(per_example[k].mean(0), mean[k], atol=1e-6) for k in mean)
    reference = _slow_dp_reference(model, batch, c)
    for chunk in (None, 2):  # vectorised in one go, and in chunks of 2 examples
        fast = build_gradient_fn([f"dp:sigma=0,c={c!r}"], max_chunk=chunk)(model, batch)
        assert fast.keys() == reference.keys()
        assert all(torch.allclose(fast[k], reference[k], atol=1e-6) for k in reference)


def test_dp_sgd_noise_is_sigma_c_over_batch(model, batch):
    sigma, c, size = 2.0, 0.5, len(TEXTS)
    clean = build_gradient_fn([f"dp:sigma=0,c={c}"])(model, batch)
    noisy = build_gradient_fn([f"dp:sigma={sigma},c={c}"], generator=0)(model, batch)
    diff = torch.cat([(noisy[k] - clean[k]).flatten() for k in clean])
    assert diff.std().item() == pytest.approx(sigma * c / size, rel=0.01)


# ---- accounting --------------------------------------------------------------------------------------------------

def _dp_accounting(sigma: float, q: float, steps: int, delta: float, accountant) -> float:
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return accountant.get_epsilon(delta)


def test_dp_epsilon_equals_dp_accounting():
    eps, why = compute_epsilon(["dp:sigma=1,c=1"], batch_size=10, shard_size=1000, steps=1000)  # q = 0.01
    assert eps == pytest.approx(2.101, abs=1e-3)
    assert eps == pytest.approx(_dp_accounting(1.0, 0.01, 1000, 1e-5, rdp.RdpAccountant()), rel=1e-9)
    assert "example" in why and "0.01" in why
    eps_pld, _ = compute_epsilon(["dp:sigma=1,c=1"], 10, 1000, 1000, method="pld")
    assert eps_pld == pytest.approx(1.828, abs=2e-3)
    assert eps_pld == pytest.approx(_dp_accounting(1.0, 0.01, 1000, 1e-5, pld.PLDAccountant()), rel=1e-9)
    eps2, _ = compute_epsilon(["dp:sigma=1.5,c=3", "prune:p=0.5"], 32, 640, 200, delta=1e-6)  # q = 0.05
    assert eps2 == pytest.approx(_dp_accounting(1.5, 0.05, 200, 1e-6, rdp.RdpAccountant()), rel=1e-9)


def test_accountant_composes_steps_like_one_event():
    acc = Accountant()
    assert acc.get_epsilon(1e-5) == 0
    acc.step(1.0, 0.01, num_steps=400)
    acc.step(1.0, 0.01, num_steps=600)
    assert acc.get_epsilon(1e-5) == pytest.approx(2.101, abs=1e-3)


def test_update_level_epsilon_is_noise_over_clip():
    m = mechanism(["clip:c=2", "noise:sigma=3"], batch_size=8, shard_size=100)
    assert m.noise_multiplier == pytest.approx(1.5) and m.sample_rate == 1 and m.unit == "update"
    eps, _ = compute_epsilon(["clip:c=2", "noise:sigma=3"], 8, 100, steps=5)
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(1.5), 5)
    assert eps == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    single, _ = single_release_epsilon(["clip:c=1", "prune:p=0.5", "noise:sigma=1"])  # NOTES: 4.38
    assert single == pytest.approx(dp_accounting.get_epsilon_gaussian(1.0, 1e-5)) and single == pytest.approx(4.38, abs=0.01)
    privacy = ClientPrivacy(["clip:c=2", "noise:sigma=3"], 8, 100)
    per_round = [privacy.record(1) for _ in range(5)]
    assert per_round == sorted(per_round) and per_round[-1] == pytest.approx(eps, rel=1e-9)


@pytest.mark.parametrize("specs, why", [
    (["noise:sigma=10"], "unbounded"), (["noise:sigma=1", "clip:c=1"], "unbounded"), ([], "no defense"),
    (["clip:c=1"], "no noise"), (["prune:p=0.9"], "no noise"), (["dp:sigma=0,c=1"], "no noise"),
])
def test_no_finite_epsilon_without_bounded_noise(specs, why):
    eps, explanation = compute_epsilon(specs, 4, 100, steps=3)
    assert math.isinf(eps) and why in explanation and "\n" not in explanation
    assert math.isinf(single_release_epsilon(specs)[0])
    privacy = ClientPrivacy(specs, 4, 100)
    assert math.isinf(privacy.record(1)) and why in privacy.explanation


# ---- what a client reports ----------------------------------------------------------------------------------

def test_a_release_travels_as_numbers_and_back():
    dp = mechanism(["dp:sigma=1.5,c=1"], batch_size=4, shard_size=100).release(3)
    metrics = dp.to_metrics()
    assert tuple(metrics) == REPORT_KEYS and all(isinstance(v, (int, float)) for v in metrics.values())
    assert Release.from_metrics(metrics) == dp == Release(1.5, 0.04, 3, "example") and dp.private
    update = mechanism(["clip:c=2", "noise:sigma=1"]).release(1)
    assert Release.from_metrics(update.to_metrics()) == Release(0.5, 1.0, 1, "update")
    nothing = mechanism([]).release(2)
    assert Release.from_metrics(nothing.to_metrics()) == nothing and not nothing.private
    assert not mechanism(["noise:sigma=1"]).release(1).private  # noise with no clip: no guarantee
    # no report, or a malformed one, reads as no report (the server then counts the client as unprotected)
    for bad in ({}, {**metrics, "privacy-unit": 7}, {**metrics, "privacy-sample-rate": float("nan")},
                {k: v for k, v in metrics.items() if k != "privacy-steps"}, {**metrics, "privacy-steps": -1}):
        assert Release.from_metrics(bad) is None


# --- budgets in epsilon: sigma calibrated so that the run ends at E ------------------------------------------------
def _rdp(z: float, q: float, steps: int, delta: float = 1e-5) -> float:
    event = dp_accounting.GaussianDpEvent(z)
    event = event if q == 1 else dp_accounting.PoissonSampledDpEvent(q, event)
    return rdp.RdpAccountant().compose(event, steps).get_epsilon(delta)


def test_budget_specs_parse_format_and_are_no_mechanism_until_resolved():
    assert parse_defenses("dp:epsilon=8,c=1") == (DpSgdBudget(8.0, 1.0),)
    assert parse_defenses("clip:c=1+noise:epsilon=2,delta=1e-6") == (Clip(1.0), NoiseBudget(2.0, 1e-6))
    assert format_defenses("dp:epsilon=8,c=1,delta=1e-6") == "dp:epsilon=8,c=1,delta=1e-06"
    assert has_budget("dp:epsilon=8,c=1") and not has_budget("dp:sigma=1,c=1")
    for use in (lambda: mechanism("dp:epsilon=8,c=1"), lambda: build_gradient_fn("dp:epsilon=8,c=1"),
                lambda: defend_update("clip:c=1+noise:epsilon=8", {"w": torch.ones(3)})):
        with pytest.raises(UsageError, match="budget"):
            use()
    assert resolve_budget("dp:sigma=1,c=1", 3, 1, 1, 10) is None


def test_dp_budget_calibrates_sigma_against_dp_accounting():
    cal = resolve_budget("dp:epsilon=2.101,c=1", rounds=1000, steps_per_round=1, batch_size=1, shard_size=100)
    assert cal.sigma == pytest.approx(1.0, rel=1e-3) and cal.sample_rate == 0.01 and cal.steps == 1000
    assert cal.specs == (DpSgd(cal.sigma, 1.0),) and cal.resolved == f"dp:sigma={cal.sigma:g},c=1"
    assert _rdp(cal.sigma, 0.01, 1000) == pytest.approx(2.101, rel=0.01) == cal.epsilon
    # FedAvg: rounds x local steps; a larger budget needs less noise
    small = resolve_budget("dp:epsilon=1,c=1", 10, 5, 4, 50)
    large = resolve_budget("dp:epsilon=8,c=1", 10, 5, 4, 50)
    assert large.sigma < small.sigma and small.steps == 50
    for cal, target in ((small, 1.0), (large, 8.0)):
        assert _rdp(cal.sigma, 4 / 50, 50) == pytest.approx(target, rel=0.01)
        assert compute_epsilon(list(cal.specs), 4, 50, 50)[0] == pytest.approx(target, rel=0.01)
    delta = resolve_budget("dp:epsilon=8,c=1,delta=1e-3", 10, 5, 4, 50)
    assert delta.delta == 1e-3 and delta.sigma < large.sigma
    assert _rdp(delta.sigma, 4 / 50, 50, 1e-3) == pytest.approx(8.0, rel=0.01)
    facts = large.facts()
    assert facts["calibrated_sigma"] == large.sigma and facts["defense_resolved"] == large.resolved


def test_update_level_budget_calibrates_the_noise_to_the_clip():
    cal = resolve_budget("clip:c=2+prune:p=0.5+noise:epsilon=4", rounds=3, steps_per_round=2, batch_size=1,
                         shard_size=10)
    (clip, prune, noise) = cal.specs
    assert (clip, prune) == (Clip(2.0), Prune(0.5)) and isinstance(noise, Noise) and cal.sample_rate == 1.0
    assert noise.sigma == pytest.approx(2 * cal.noise_multiplier, rel=1e-5) and cal.sigma == noise.sigma
    assert _rdp(cal.noise_multiplier, 1.0, 6) == pytest.approx(4.0, rel=0.01)
    assert compute_epsilon(list(cal.specs), 1, 10, 6)[0] == pytest.approx(4.0, rel=0.01)
    assert resolve_budget("clip:c=2+noise:epsilon=8", 3, 2, 1, 10).sigma < noise.sigma


@pytest.mark.parametrize("spec,args,needle", [
    ("dp:epsilon=-1,c=1", None, "epsilon"),
    ("dp:epsilon=0,c=1", None, "epsilon"),
    ("dp:epsilon=1,c=0", None, "c must"),
    ("dp:epsilon=1,c=1,delta=1", None, "delta"),
    ("dp:epsilon=1,c=1,delta=0", None, "delta"),
    ("dp:epsilon=1,sigma=1,c=1", None, "not both"),
    ("noise:epsilon=1", None, "clip before"),
    ("clip:c=1+noise:epsilon=1+noise:sigma=1", None, "another noise"),
    ("dp:epsilon=1,c=1+clip:c=1+noise:epsilon=1", None, "one epsilon budget"),
    ("dp:epsilon=1e-4,c=1", (2, 1, 1, 1), "no noise"),  # q = 1, two steps: RDP cannot go this low
    ("clip:c=1+noise:epsilon=1e6", (2, 1, 1, 1), "no noise"),  # would need almost no noise
])
def test_nonsense_or_impossible_budget_is_a_usage_error(spec, args, needle):
    with pytest.raises(UsageError, match=needle) as info:
        parse_defenses(spec) if args is None else resolve_budget(spec, *args)
    assert "\n" not in str(info.value)
