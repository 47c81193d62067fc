"""`fedleak sweep`: one federation per (defense, attack, seed), and the verdict on the leakage-accuracy frontier.

Each run is an ordinary `simulate` run in its own sub-directory (seed in its name). A setting's accuracy and leakage
come from the same federations: its leakage is every update the clients of those runs sent that the server attacked
(each run's ``leakage.jsonl``), its accuracy their final dev accuracy. ``runs.csv`` (one row per run),
``tradeoff.csv`` (one row per setting, over seeds; ``fedsim.frontier.stats``) and ``summary.json`` (kind ``sweep``)
are rewritten after every run, so an interrupted sweep keeps what it finished; ``verdict.json`` and
``frontier.png`` come at the end, and the verdict is printed last. Files: ``fedsim.results.FILES["sweep"]``.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from defenses import format_defenses, parse_defenses, single_release_epsilon
from fedsim.core.errors import UsageError
from fedsim.core.io import write_json
from fedsim.frontier.plot import plot_frontier
from fedsim.frontier.stats import COLUMNS, aggregate, loss_curves
from fedsim.frontier.verdict import verdict
from fedsim.results import Resume, RunDir, read_records, read_scores
from fedsim.server_app import resolve_defense
from fedsim.settings import Settings

RUN_COLUMNS = ("defense", "attack", "seed", "status", "epsilon", "epsilon_single_release", "final_accuracy",
               "attacks_scored", "attacks_failed", "rouge1", "rouge2", "reused", "run_dir")


def run_label(defense: str, attack: str, seed: int) -> str:
    """A directory name for one run: readable, filesystem-safe, the seed in it."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{defense}__{attack}__seed{seed}")


def sweep(base: Settings, defenses: Sequence[str], attacks: Sequence[str], out: str | Path,
          run: Callable[[Settings], dict[str, Any]] | None = None, echo: Callable[[str], None] = print,
          resume: bool = False, seeds: int = 1, command: str = "", jobs: int = 1) -> list[dict]:
    """Run every (defense, attack) pair with seeds ``base.seed`` .. ``base.seed + seeds - 1``; returns the rows of
    ``tradeoff.csv`` (one per pair; ``final_accuracy`` and ``run_dir`` repeat the mean and the first run for callers
    of one seed). ``run`` is the federation (default: simulate); ``command`` is quoted on the figure.

    ``resume``: a run whose sub-directory already holds a completed run of the same settings is read, not rerun.
    ``jobs``: federations run at once, each in its own process with its share of the cores (``run`` must then be
    a module-level function; a federation of small batches uses one core poorly, so two on two cores finish
    sooner than one after the other). Rows keep the plan's order whatever order the runs finish in.
    An epsilon budget (``dp:epsilon=E,c=C``) is resolved per run with that run's settings, all of them before the
    first run starts (an impossible one fails the sweep at once); its row keeps the budget as its label.
    """
    if seeds < 1:
        raise UsageError(f"--seeds {seeds!r}: expected a positive integer")
    if run is None:
        from fedsim.simulate import run as run_simulation

        run = run_simulation
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = []
    resolved: dict[tuple[str, int], list[str]] = {}  # (label, seed) -> the sigma specs that run runs
    labels = [format_defenses(spec) for spec in defenses]  # validates every spec before the first run starts
    for seed in range(base.seed, base.seed + seeds):  # seed-major: an interrupted sweep has every setting sooner
        for label in labels:
            for attack in attacks:
                specs = [] if label == "none" else [label]
                settings = dataclasses.replace(base, defense=specs, attack=attack, seed=seed,
                                               out=str(out / run_label(label, attack, seed)))
                plan.append((label, attack, settings))
                if (label, seed) not in resolved:  # a budget's sigma depends on the seed's smallest shard
                    resolved[label, seed] = resolve_defense(settings)[0].defense
    files = RunDir(out, "sweep")
    earlier = Resume.runs([s.out for _, _, s in plan], "federation run", enabled=resume)
    runs: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    facts = {"settings": {k: v for k, v in base.to_run_config().items() if k not in ("defense", "attack", "out")},
             "defenses": list(dict.fromkeys(labels)), "attacks": list(attacks),
             "seeds": list(range(base.seed, base.seed + seeds)), "runs": len(plan),
             "run_dirs": [s.out for _, _, s in plan], "command": command}

    def record(status: str, **extra: Any) -> None:
        files.write_summary({"status": status, **facts, "runs_finished": len(runs), "rows": len(rows),
                             "runs_incomplete": sum(r["status"] != "completed" for r in runs), "reused": earlier.kept,
                             **extra})

    files.clear()  # a new sweep replaces the files of an old one (its runs stay, for --resume)
    record("running")
    order = {item[2].out: i for i, item in enumerate(plan)}

    def finish(item: tuple[str, str, Settings], summary: dict[str, Any], reused: bool) -> None:
        nonlocal done, rows
        label, attack, settings = item
        this = run_record(label, attack, settings, summary, resolved[label, settings.seed], reused)
        runs.append(this)
        runs.sort(key=lambda r: order[r["run_dir"]])
        if this["status"] != "completed":
            echo(f"   run {settings.out} ended {this['status']}: in runs.csv, left out of tradeoff.csv")
        done = [r for r in runs if r["status"] == "completed"]  # half a run is no seed
        rows = aggregate(done)
        files.write_csv("runs.csv", runs, RUN_COLUMNS)
        files.write_csv("tradeoff.csv", rows, COLUMNS)
        record("running")

    try:
        todo = []
        for i, item in enumerate(plan, 1):
            label, attack, settings = item
            summary = earlier.take(settings.to_run_config(), run_key(settings))
            if summary is None:
                todo.append((i, item))
                continue
            echo(f"== sweep {i}/{len(plan)}: defense {label}, attack {attack}, seed {settings.seed} -> "
                 f"{settings.out} ({Resume.KEPT})")
            finish(item, summary, reused=True)
        for item, summary in execute(todo, len(plan), run, jobs, echo):
            finish(item, summary, reused=False)
        result = verdict(rows)
        write_json(files.path("verdict.json"), result)
        files.save_figure("frontier.png", plot_frontier(rows, loss_curves(done), command, earlier.kept, len(plan)),
                          dpi=120)
    except BaseException as exc:
        record("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    record("completed", verdict=result["setting"] if result["stopped"] else None)
    echo(f"\nwrote {out}/{{runs.csv, tradeoff.csv, verdict.json, frontier.png}} ({len(plan)} runs, "
         f"{earlier.kept} kept from an earlier run); `fedleak report {out}` shows the table")
    for line in result["text"]:
        echo(line)
    return [{**r, "final_accuracy": r["accuracy_mean"], "run_dir": r["run_dirs"][0]} for r in rows]


def execute(todo: list[tuple[int, tuple[str, str, Settings]]], total: int, run: Callable[[Settings], dict[str, Any]],
            jobs: int, echo: Callable[[str], None]) -> Iterator[tuple[tuple[str, str, Settings], dict[str, Any]]]:
    """Run the plan's remaining federations, one after the other or ``jobs`` at a time (each in a spawned process
    with cores / jobs torch threads, its round-by-round output silenced); yields each as it finishes."""
    def says(i: int, item: tuple[str, str, Settings]) -> str:
        return f"== sweep {i}/{total}: defense {item[0]}, attack {item[1]}, seed {item[2].seed} -> {item[2].out}"

    if jobs <= 1:
        for i, item in todo:
            echo(says(i, item))
            yield item, run(item[2])
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_quietly, run, item[2], threads): (i, item) for i, item in todo}
        for i, item in todo[:jobs]:
            echo(says(i, item) + " (started)")
        for future in as_completed(futures):
            i, item = futures[future]
            summary = future.result()
            echo(says(i, item) + f" (finished: {summary.get('status')})")
            yield item, summary


def _run_quietly(run: Callable[..., dict[str, Any]], settings: Settings, threads: int) -> dict[str, Any]:
    import logging

    from fedsim.core.logs import quiet_libraries

    torch.set_num_threads(threads)
    quiet_libraries()
    logging.getLogger("flwr").setLevel(logging.ERROR)  # Flower logs every step at INFO
    return run(settings, echo=_silent)


def _silent(_: str) -> None:
    """A run's per-round lines, dropped: several runs at once would interleave them."""


def run_record(label: str, attack: str, settings: Settings, summary: dict[str, Any], resolved: list[str],
               reused: bool) -> dict[str, Any]:
    """One run as ``fedsim.frontier`` reads it: its accuracy and ε from its summary, its attacked updates' scores and
    its loss curve from its own files (so leakage and accuracy are of the same federation)."""
    leaks = read_scores(settings.out)
    updates = [{"error": True} if "error" in r else {"rouge1": r.get("rouge1"), "rouge2": r.get("rouge2")}
               for r in leaks]
    scored = [u for u in updates if "error" not in u]
    single, _ = single_release_epsilon(list(parse_defenses(resolved)))
    return {"defense": label, "attack": attack, "seed": settings.seed, "status": summary.get("status"),
            "epsilon": _eps(summary.get("epsilon")), "epsilon_single_release": single,
            "final_accuracy": summary.get("final_accuracy"), "attacks_scored": len(scored),
            "attacks_failed": len(updates) - len(scored),
            "rouge1": _mean(u["rouge1"] for u in scored), "rouge2": _mean(u["rouge2"] for u in scored),
            "reused": reused, "run_dir": settings.out, "updates": updates,
            "train_loss": [(r["round"], r["train_loss"]) for r in read_records(settings.out, "rounds.jsonl")
                           if r.get("train_loss") is not None]}


# How a run executes, not what it computes: a run that differs only in these is the same run.
_EXECUTION_ONLY = ("out", "data-dir", "attack-backend", "attack-gpus", "attack-threads", "attack-timeout",
                   "attack-actors", "ray-address")


def run_key(settings: Settings) -> list[str]:
    """The settings a kept run must share with this one (``Resume`` matches completed runs on them)."""
    return [k for k in settings.to_run_config() if k not in _EXECUTION_ONLY]


def _mean(values: Any) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def _eps(value: Any) -> float:
    """ε from a summary: None (no defense accounted) and "inf" both mean no finite guarantee."""
    if value is None:
        return math.inf
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf
