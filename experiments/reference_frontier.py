"""The reference frontier: which defense stops the worst-case attack on a model that learns, at what cost.

    python experiments/reference_frontier.py --resume            # the committed run (8-9 h on 2 cores, in parts)
    python experiments/reference_frontier.py --quick             # the same pipeline on the tiny model, seconds
    python experiments/reference_frontier.py --table-only        # the tables from the runs completed so far

One ``fedleak sweep`` (``fedsim.sweep.sweep``) over the settings below, each with ``--seeds`` seeds, on pretrained
``minilm-l6``, SST-2 from the local GLUE copy: FedAvg with E = 2 local SGD steps of B = 2 sentences (an update of
4 sentences, which the worst-case attack can still recover and certify; see #11), the server applying the clients'
mean update with Adam (``--server-optimizer fedadam``, so that the model reaches >= 0.80 dev accuracy within the
rounds; pilot, one seed: 0.72 / 0.79 / 0.819 / 0.808 / 0.818 after 8 / 16 / 24 / 32 / 40 rounds with 32 clients,
where 16 clients swung between 0.735 and 0.802), accuracy on the whole dev split (872 sentences) at round 0 and
after the last round. The curious server attacks one client in rounds 1, 7, ..., 37 with ``best`` (inline, under a
per-update time budget), so each setting's leakage is over seeds x 7 updates that the clients really sent in the
runs whose accuracy is reported.

Cost on 2 CPU cores, one federation per core: 23 minutes for an undefended federation (training and its 7
attacks of 90 s), 39 for a noised one (Gaussian noise drawn for 22 M weights in every local step), so the 30
federations take about 8 to 9 hours at two at a time; run it in parts with ``--resume``. The run directories are committed without their text
(``scores.jsonl``, not ``leakage.jsonl``), so a later machine resumes where an earlier one stopped.

The federations run in this process's children, ``--jobs`` at a time (``fedsim.simulate.run_in_process``: the real
ServerApp and ClientApp without Ray, whose per-round serialisation of 22 M parameters costs more than the
training here). Written to ``--out`` (default ``experiments/results/reference_frontier``): the sweep's
``tradeoff.csv``, ``runs.csv``, ``verdict.json``, ``frontier.png``, ``summary.json`` and one directory per run
(``leakage.jsonl``, 0600, holds the reconstructions); beside it, ``reference_frontier.md`` (the table, the
verdict, the command, n, wall time and reused runs). ``--resume`` keeps every completed run. The last line printed is one JSON
object.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as python experiments/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import common  # noqa: E402  (sets the OpenMP and offline environment before torch loads)

from fedsim.report import markdown_table  # noqa: E402
from fedsim.results import RunDir, read_summary, record_experiment  # noqa: E402
from fedsim.settings import Settings  # noqa: E402
from fedsim.simulate import run_in_process  # noqa: E402
from fedsim.sweep import sweep  # noqa: E402

NAME = "reference_frontier"
REFERENCE = dict(model="minilm-l6", init="pretrained", dataset="sst2", max_length=64, mode="fedavg", local_steps=2,
                 batch_size=2, clients=32, rounds=40, lr=0.05, server_optimizer="fedadam:eta=3e-4", eval_every=40,
                 eval_examples=0, attack="best", attack_clients="1", attack_rounds="every:6",
                 attack_backend="inline", attack_threads=1, attack_time_budget=90.0)
DEFENSES = ["none", "noise:sigma=1e-4", "noise:sigma=1e-3", "noise:sigma=1e-2", "noise:sigma=1e-1", "clip:c=1",
            "dp:epsilon=1,c=1", "dp:epsilon=3,c=1", "dp:epsilon=8,c=1", "dp:epsilon=1000,c=1"]
QUICK = dict(model="tiny", init="uniform:0.1", dataset="pii", max_length=24, clients=2, rounds=2, eval_every=2,
             eval_examples=40, attack_rounds="all", attack_iterations=20, attack_time_budget=3.0,
             server_optimizer="fedadam:eta=1e-3")
QUICK_DEFENSES = ["none", "noise:sigma=0.1"]
TABLE = ("defense", "epsilon", "n_seeds", "accuracy_mean", "accuracy_sd", "accuracy_cost_points", "accuracy_cost_lo",
         "accuracy_cost_hi", "n_updates", "n_failed", "rouge1_mean", "rouge1_lo", "rouge1_hi", "rouge2_mean",
         "runs_reused")


def parse_args(argv: Sequence[str] | None) -> Any:
    p = common.UsageParser(description=__doc__.strip().splitlines()[0], epilog=__doc__,
                           formatter_class=common.argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny model, built-in pii data, 2 settings, 2 rounds")
    p.add_argument("--out", default=None, help=f"output directory (default: experiments/results/{NAME})")
    p.add_argument("--data-dir", default=str(common.GLUE_DIR), help="GLUE directory (default: ../shared/glue)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per setting (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="the first seed (default: 0)")
    p.add_argument("--jobs", type=int, default=2, help="federations at once, one process each (default: 2)")
    p.add_argument("--defense", action="append", default=None, metavar="SPEC",
                   help="a setting to run (repeatable; default: the reference grid, see the module doc)")
    p.add_argument("--resume", action="store_true", help="keep the completed runs OUT already holds")
    p.add_argument("--table-only", action="store_true",
                   help="start no federation: tabulate the completed runs OUT holds (the others are listed as not "
                        "run in runs.csv and left out of the table, the verdict and the figure); implies --resume")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1:
        raise common.UsageError(f"--seeds and --jobs must be positive integers, got {args.seeds} and {args.jobs}")
    args.out = Path(args.out or (common.RESULTS / NAME))
    args.resume = args.resume or args.table_only
    return args


def not_run(settings: Settings) -> dict[str, Any]:
    """``--table-only``'s federation: none (a run the plan holds but OUT has not completed)."""
    return {"status": "not run"}


def base_settings(args: Any) -> Settings:
    fields = {**REFERENCE, **(QUICK if args.quick else {})}
    data_dir = "" if args.quick else str(args.data_dir)
    if data_dir and not Path(data_dir, "SST-2").is_dir():
        raise common.UsageError(f"--data-dir {data_dir!r} has no SST-2/ directory; accepted: a local GLUE copy "
                                "(../shared/glue) or --quick")
    return replace(Settings(**fields), data_dir=data_dir, seed=args.seed, out=str(args.out))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    common.quiet_libraries()
    base = base_settings(args)
    defenses = args.defense or (QUICK_DEFENSES if args.quick else DEFENSES)
    command = "python experiments/reference_frontier.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    rows = sweep(base, defenses, [base.attack], args.out, run=not_run if args.table_only else run_in_process,
                 resume=args.resume, seeds=args.seeds, command=command.strip(),
                 jobs=1 if args.table_only else args.jobs)
    summary = read_summary(args.out) or {}
    verdict = json.loads((args.out / "verdict.json").read_text())
    wall = time.perf_counter() - started
    missing = summary.get("runs_incomplete", 0)
    note = (f"Command: `{command.strip()}`. {summary.get('runs')} federations ({len(defenses)} settings x "
            f"{args.seeds} seeds), {summary.get('reused', 0)} kept from an earlier run (`--resume`)"
            f"{f', {missing} not run yet (left out; n_seeds counts what each setting has)' if missing else ''}; this "
            f"invocation's wall time {wall:.0f} s on {os.cpu_count()} CPU cores, "
            f"{'no federation run (--table-only)' if args.table_only else f'{args.jobs} federation(s) at once'}, "
            f"load average {load_start:.1f} at start and {os.getloadavg()[0]:.1f} at end. Accuracy: whole dev split, "
            f"mean ± sd over seeds; its cost against `none` with a Welch 95% interval; leakage: ROUGE-1/2 of "
            f"`{base.attack}` ({base.attack_time_budget:.0f} s per update, {base.attack_threads} torch thread(s): a "
            f"setting that stops it within that budget may not stop a longer attack) over every attacked update of "
            f"every seed, 95% interval.")
    files = RunDir(args.out.parent, "experiment")  # beside the other scripts' tables
    files.write_text(f"{NAME}.md", "\n\n".join([
        "# The reference frontier (`best`, the worst case, against accuracy)", note,
        markdown_table(list(TABLE), [[r.get(k) for k in TABLE] for r in rows]),
        "\n".join(verdict["text"])]) + "\n")
    record_experiment(args.out.parent, NAME, {"status": "done", "rows": len(rows), "reused": summary.get("reused", 0)})
    result = {"bench": NAME, "quick": args.quick, "runs": summary.get("runs"), "reused": summary.get("reused", 0),
              "wall_seconds": round(wall, 1), "verdict": verdict.get("setting"),
              "rows": [{k: r.get(k) for k in TABLE} for r in rows]}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    common.run_script(main)
