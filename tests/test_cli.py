"""The command line as a user meets it: help, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedsim.cli import SUBCOMMANDS, main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_five_subcommands():
    out = _run("--help")
    assert out.returncode == 0
    for name in ("attack", "simulate", "deploy", "sweep", "report"):
        assert name in out.stdout
    assert SUBCOMMANDS == ("attack", "simulate", "deploy", "sweep", "report")


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_subcommand_has_help(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main([sub, "--help"])
    assert exc.value.code == 0
    assert f"fedleak {sub}" in capsys.readouterr().out


def test_unknown_subcommand_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:  # in-process: the subprocess above already runs the real command
        main(["bogus"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "bogus" in lines[0] and "attack" in lines[0]
    assert "Traceback" not in err
