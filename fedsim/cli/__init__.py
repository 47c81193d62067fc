"""``fedleak`` command line: one module per subcommand, each adding its parser and a ``run(args)``."""

from __future__ import annotations

import argparse
import os
import sys

# Before torch loads OpenMP: with the default spin-wait, two threads on a shared 2-core machine wait for each other
# at each of an attack's many small parallel regions (experiments/bench_attack.py measured 5.9 s against 0.2 s per
# TAG iteration at load 7). PASSIVE lets a waiting thread yield; it costs nothing measurable on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fedsim.core.errors import UsageError  # noqa: E402
from fedsim.core.logs import quiet_libraries  # noqa: E402

SUBCOMMANDS = ("attack", "simulate", "deploy", "sweep", "report")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line on stderr with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from fedsim.cli import attack, deploy, report, simulate, sweep

    parser = _Parser(prog="fedleak", description="Federated learning with an honest-but-curious server that "
                     "reconstructs private text from transformer gradients, and the defenses against it.")
    parser.add_argument("--version", action="version", version=f"fedleak {__import__('fedsim').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{attack,simulate,deploy,sweep,report}", parser_class=_Parser)
    for module in (attack, simulate, deploy, sweep, report):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Hubs are often unreachable: never wait ~25 s on retries unless the user asked for the hub explicitly.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        sys.stderr.write(f"fedleak {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"fedleak {args.command}: interrupted; results written so far are kept\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
