"""Bounded attack time (issue #11, item 4): a job given S seconds answers within 2 S with the best it has, however
many iterations it was allowed; `best` warm-starts its optimisation from span's answer; the option reaches the
attack from `fedleak attack`, `simulate` and the federation's jobs."""

import time

import pytest
import torch

from adversary.case import observe
from adversary.dummy import apply_warm, build_layout, parse_warm, warm_spec
from adversary.engine import GradientMatcher, MatchConfig
from adversary.options import Budget
from adversary.registry import run_attack
from fedsim.attack_actor import Job, attack_job
from fedsim.core.errors import UsageError
from fedsim.core.text import make_batch
from fedsim.settings import AttackJob, Settings

SENTENCES = ["the cat sat on the mat.", "james green paid 102 dollars."]
HUGE = 10**6  # iterations no test could finish: only the clock can stop these attacks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clean(tiny, tokenizer):
    return observe(tiny, make_batch(tokenizer, SENTENCES, [1, 0]), tokenizer)


@pytest.fixture(scope="module")
def noised(tiny, tokenizer):
    from defenses import build_gradient_fn

    return observe(tiny, make_batch(tokenizer, SENTENCES[:1], [1]), tokenizer,
                   gradient_fn=build_gradient_fn(["noise:sigma=1e-4"], generator=0))


def test_a_tag_job_given_5_s_returns_within_10_s(clean):
    observation, _ = clean
    result = attack_job(Job(round=1, client=0, method="tag", iterations=HUGE, seed=0, seconds=5.0), observation)
    assert "error" not in result, result.get("error")
    rec = result["result"]
    assert result["seconds"] < 10.0
    assert rec.info["deadline_reached"] and 0 < rec.iterations < HUGE  # stopped by the clock, not the steps
    assert len(rec.token_ids) == 2 and all(rec.token_ids)  # an answer, from where it got


def test_best_on_a_noised_gradient_given_5_s_returns_within_10_s(noised):
    observation, _ = noised
    start = time.perf_counter()
    rec = run_attack("best", observation, Budget(HUGE, 5.0), seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 10.0
    assert rec.info["span_check_passed"] is False and rec.certified == [False]  # span could not certify
    steps = rec.info["iterations_per_attack"]
    assert 0 < steps["tag"] < HUGE and 0 < steps["lamp"] < HUGE  # both optimisation attacks got a share of it
    assert rec.info["warm_start"] == "off"  # span had nothing to start from


def test_span_stops_testing_the_whole_vocabulary_at_its_deadline(tokenizer):
    """Under noise too small to stop span, every embedding-gradient row is non-zero: the token set is the whole
    vocabulary, and testing it took 2 s (idle) to 20 s (loaded) here on tinybert4 (B = 1). Given 0.3 s it stops
    between chunks and answers within 4 s."""
    from defenses import build_gradient_fn
    from fedsim.core.models import build_model

    model = build_model("tinybert4", "normal:0.02", seed=0)
    observation, truth = observe(model, make_batch(tokenizer, ["james green paid 102 dollars."], [1]), tokenizer,
                                 gradient_fn=build_gradient_fn(["noise:sigma=1e-12"], generator=0))
    start = time.perf_counter()
    rec = run_attack("span", observation, Budget(1000, 0.3), seed=0)  # the whole test takes ~2 s unloaded
    assert time.perf_counter() - start < 4.0
    assert rec.info["deadline_reached"]
    assert rec.token_ids[0][:1] == truth.token_ids[0][:1]  # what it had: the likeliest tokens are tested first


def test_warm_spec_round_trips_and_rejects_garbage():
    spec = warm_spec([[101, 7, 102], [101, None, 102]], pinned=1)
    assert spec == "tokens:=101,7,102/101,?,102"
    warm = parse_warm(spec)
    assert warm.sequences == ((101, 7, 102), (101, None, 102)) and warm.pinned == (True, False)
    for bad in ("tokens:101,x,102", "tokens:101,-3"):
        with pytest.raises(UsageError, match="warm-start"):
            parse_warm(bad)


def test_warm_start_begins_at_the_given_tokens_and_pins_certified_sequences(clean, tokenizer):
    observation, truth = clean
    cold = GradientMatcher(observation, MatchConfig(), seed=0)
    assert cold.decode_ids() != truth.token_ids  # a random start is not the answer
    warm = GradientMatcher(observation, MatchConfig(init=warm_spec(truth.token_ids)), seed=0)
    assert warm.decode_ids() == truth.token_ids and bool(warm.layout.free.any())  # starts there, all still free
    assert len(truth.token_ids[0]) != len(truth.token_ids[1])
    pinned = GradientMatcher(observation, MatchConfig(init=warm_spec(truth.token_ids[::-1], pinned=1)), seed=0)
    assert not pinned.layout.free[1].any() and pinned.layout.free[0].any()  # pinned in the row of its length
    assert pinned.decode_ids() == truth.token_ids
    # A start id the answer cannot hold (a special token) stays random; a pinned sequence that does not fit its
    # row (wrong length) is only a start.
    layout = build_layout(tokenizer, [5])
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    allowed[tokenizer.sep_token_id] = False
    new, start = apply_warm(parse_warm(f"tokens:=101,7,{tokenizer.sep_token_id},2000"), layout, allowed)
    assert bool(new.free.equal(layout.free)) and start[0].tolist() == [-1, 7, -1, 2000, -1]


def test_best_warm_starts_from_an_uncertified_span_answer(clean):
    """Span cut short (one linker descent for two sequences) answers uncertified: the optimisation starts from
    what it found instead of from scratch, unless told ``off``."""
    observation, _ = clean
    cut = {"attacks": ["tag"], "span": {"max_descents": 1}}
    rec = run_attack("best", observation, Budget(20), seed=0, options=cut)
    assert not rec.info["span_check_passed"] and rec.info["warm_start"] == "pin"
    off = run_attack("best", observation, Budget(20), seed=0, options={**cut, "warm_start": "off"})
    assert off.info["warm_start"] == "off"


def test_the_option_reaches_every_job():
    assert Settings().attack_time_budget == 300.0 and AttackJob().attack_time_budget is None
    assert Settings.from_run_config({"attack-time-budget": 12}).attack_time_budget == 12.0
    for bad in (0, -1.0, float("inf"), "5"):
        with pytest.raises(UsageError, match="--attack-time-budget"):
            Settings(attack_time_budget=bad)
        with pytest.raises(UsageError, match="--attack-time-budget"):
            AttackJob(attack_time_budget=bad)
    from fedsim import task
    from fedsim.server_app import attack_plan

    train = task.load_split("pii", "train", "", 0)
    assert attack_plan(Settings(model="tiny", init="normal:0.02", attack_time_budget=7.0), train).time_budget == 7.0


@pytest.mark.parametrize("command", ["attack", "simulate"])
@pytest.mark.parametrize("value", ["0", "-2", "soon"])
def test_a_bad_budget_is_one_line_and_exit_2(command, value, capsys):
    from fedsim.cli import main

    try:
        code = main([command, "--attack-time-budget", value])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--attack-time-budget" in err and value in err


def test_fedleak_attack_honours_the_budget(tmp_path, capsys):
    import json

    from fedsim.cli import main

    out = tmp_path / "run"
    start = time.perf_counter()
    code = main(["attack", "--model", "tiny", "--init", "uniform:0.1", "--quiet", "--num-samples", "1",
                 "--method", "tag", "--iterations", str(HUGE), "--attack-time-budget", "2", "--out", str(out)])
    assert code == 0 and time.perf_counter() - start < 10.0
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["seconds"] < 4.0 and record["iterations"] < HUGE
    assert json.loads((out / "summary.json").read_text())["attack_time_budget"] == 2.0
