"""The default federation (issue #12 item 1): which rounds are attacked, and the bag-of-words note."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.core.errors import UsageError
from fedsim.recorder import bag_of_words_note
from fedsim.settings import Settings
from test_federation import _one_thread, _task_identity, read, run_local, small  # noqa: F401 - fixtures


def test_the_defaults_are_a_learning_model_attacked_every_third_round():
    s = Settings()
    assert (s.model, s.init, s.rounds, s.attack, s.attack_clients_count()) == ("minilm-l6", "pretrained", 12, "tag", 1)
    assert s.attacked_rounds() == frozenset({1, 4, 7, 10})


@pytest.mark.parametrize("spec, rounds, expected", [
    ("all", 5, None), ("every:1", 3, {1, 2, 3}), ("every:2", 5, {1, 3, 5}), ("every:9", 3, {1}), ("2,4", 5, {2, 4}),
])
def test_attack_rounds_specs(spec, rounds, expected):
    chosen = Settings(model="tiny", init="normal:0.02", rounds=rounds, attack_rounds=spec).attacked_rounds()
    assert chosen == (None if expected is None else frozenset(expected))


@pytest.mark.parametrize("bad", ["every:0", "every:x", "0,2", "", "some"])
def test_bad_attack_rounds_are_one_line_errors(bad):
    with pytest.raises(UsageError, match="--attack-rounds"):
        Settings(model="tiny", init="normal:0.02", attack_rounds=bad)


def test_only_the_planned_rounds_are_attacked(tmp_path: Path):
    s = small(tmp_path, rounds=3, attack_rounds="every:2", attack_iterations=5)
    run_local(s)
    leaks = read(Path(s.out) / "leakage.jsonl")
    assert sorted({r["round"] for r in leaks}) == [1, 3] and len(leaks) == 4  # two clients, rounds 1 and 3


def _summary(attack: str, r1: float, r2: float) -> dict:
    settings = Settings(model="tiny", init="normal:0.02", rounds=4, attack=attack, out="runs/x").to_run_config()
    return {"settings": settings, "rouge1": r1, "rouge2": r2}


def test_a_bag_of_words_names_itself_and_gives_the_worst_case_command():
    lines = bag_of_words_note(_summary("tag", 0.6, 0.05))
    assert "bag of words" in lines[0] and "ROUGE-2 0.05" in lines[0]
    assert lines[1].strip() == ("fedleak simulate --model tiny --init normal:0.02 --out runs/x-best --rounds 4 "
                                "--attack best")


@pytest.mark.parametrize("attack, r1, r2", [("tag", 0.9, 0.8), ("tag", 0.1, 0.0), ("best", 0.6, 0.05)])
def test_no_note_when_the_order_came_back_or_nothing_did_or_the_attack_is_already_the_worst_case(attack, r1, r2):
    assert bag_of_words_note(_summary(attack, r1, r2)) == []


def test_eval_examples_zero_means_all_on_the_command_line_and_a_negative_count_is_exit_2(capsys):
    import argparse

    from fedsim.settings import add_options, from_args

    parser = argparse.ArgumentParser()
    add_options(parser, Settings)
    assert from_args(Settings, parser.parse_args(["--eval-examples", "0"])).eval_examples == 0
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--eval-examples", "-1"])
    assert exit_info.value.code == 2 and "'-1'" in capsys.readouterr().err
