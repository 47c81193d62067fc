"""The layering is part of the test command: a wrong import fails CI (contracts in pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedsim", "adversary", "defenses", "experiments")


def test_import_contracts_are_kept():
    from importlinter.cli import lint_imports

    # 0: every contract kept; 1: one broken (the report above names the offending import).
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def hidden_cross_package_imports() -> list[str]:
    """Imports of another project package made inside a function body (they fail at call time, not import time)."""
    hits = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and node.module:
                        names = [node.module]
                    elif isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    else:
                        continue
                    hits += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in names
                             if m.split(".")[0] in PACKAGES and m.split(".")[0] != package]
    return sorted(set(hits))


def test_no_cross_package_import_hidden_in_a_function():
    assert hidden_cross_package_imports() == []


@pytest.mark.parametrize("package", ["adversary", "defenses"])
def test_attacks_and_defenses_import_only_the_core(package):
    """Checked statically above; here the same at run time, in a fresh interpreter."""
    import subprocess
    import sys

    code = (f"import sys, {package}, pkgutil, importlib\n"
            f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'): importlib.import_module(m.name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fedsim', 'adversary', 'defenses') "
            f"and not m.startswith(('{package}', 'fedsim.core')) and m != 'fedsim')\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
