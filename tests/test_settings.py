"""One settings schema: the CLI options and the Flower run_config keys come from the dataclass fields."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from fedsim.core.errors import UsageError
from fedsim.settings import AttackJob, Settings, add_options, flag_of, from_args

ROOT = Path(__file__).resolve().parents[1]


def test_flwr_app_config_is_exactly_the_settings_defaults():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    expected = Settings().to_run_config()
    assert set(config) == set(expected)  # a new setting must appear in pyproject.toml, a removed one must go
    for key, value in expected.items():
        if key != "out":  # `flwr run` resolves paths against the SuperLink's directory: its own default
            assert config[key] == value, key


@pytest.mark.parametrize("cls", [Settings, AttackJob])
def test_every_option_field_is_a_command_line_option_with_its_default(cls):
    parser = argparse.ArgumentParser()
    add_options(parser, cls)
    args = parser.parse_args([])
    for f in fields(cls):
        if f.metadata.get("cli"):
            assert flag_of(f) in parser._option_string_actions, f.name
            assert getattr(args, f.name) == getattr(cls(), f.name), f.name
    assert from_args(cls, args) == cls()  # no flags: the dataclass defaults


def test_options_parse_into_validated_settings():
    parser = argparse.ArgumentParser()
    add_options(parser, Settings)
    s = from_args(Settings, parser.parse_args(["--model", "tiny", "--defense", "noise:sigma=0.1", "--defense", "none",
                                               "--lr", "0.5", "--dataset", "SST-2", "--eval-examples", "7"]))
    assert (s.model, s.defense, s.lr, s.dataset, s.eval_examples) == ("tiny", ["noise:sigma=0.1"], 0.5, "sst2", 7)
    assert Settings.from_run_config(s.to_run_config()) == s


def test_attack_job_flags():
    parser = argparse.ArgumentParser()
    add_options(parser, AttackJob)
    job = from_args(AttackJob, parser.parse_args(["--private-lengths", "--num-samples", "3", "--split", "dev"]))
    assert (job.public_lengths, job.num_samples, job.split, job.out) == (False, 3, "dev", "runs/attack")


@pytest.mark.parametrize("bad", [dict(partition="dirichlet:-1"), dict(attack_gpus="-1"), dict(init="normal:-2"),
                                 dict(defense=["noise:sigma=x"]), dict(attack="bogus"), dict(dataset="mnist")])
def test_bad_values_are_usage_errors(bad):
    with pytest.raises(UsageError):
        Settings(**bad)


def test_run_config_rejects_unknown_keys():
    with pytest.raises(UsageError, match="colour"):
        Settings.from_run_config({"colour": "red"})
