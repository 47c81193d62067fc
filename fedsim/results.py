"""Every output file of every command, the only code that writes them, and the one resume mechanism.

* ``FILES`` declares, per kind of run (attack, simulate, sweep, experiment), each file: its name, what it holds,
  and whether it is private (mode 0600: it holds client text or reconstructions; every JSON file is written 0600).
* ``RunDir`` writes a declared file of its kind and nothing else: records appended and flushed one by one (an
  interrupted run keeps what it had), summaries and tables replaced atomically (a reader never sees half a file).
  Every ``summary.json`` states the run's ``kind``; ``read_run`` reads it back (``fedleak report`` dispatches on it).
* ``Resume`` answers "which units of this run are already done with the same settings" for ``sweep --resume``
  (completed run directories) and the experiments' ``--resume`` (raw rows), and counts what it kept (``LEDGER``).
* ``Recorder`` writes a ``simulate`` run's files as the federation goes.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from fedsim.core.errors import UsageError
from fedsim.core.io import append_jsonl, read_jsonl, write_json, write_private_text
from fedsim.core.plots import pyplot, save_figure
from fedsim.settings import Settings, command_flags


# --- what each kind of run writes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputFile:
    """One file of a run directory. ``name`` may hold ``{placeholders}`` (an experiment's name, a cell number)."""

    name: str
    holds: str
    private: bool = False  # mode 0600

    def matches(self, relative: str) -> bool:
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{[a-z_]+\})", self.name))
        return re.fullmatch(pattern, relative) is not None


KINDS = ("attack", "simulate", "sweep", "experiment")
SUMMARY = "summary.json"  # every run directory's manifest: it states the run's kind
FILES: dict[str, tuple[OutputFile, ...]] = {
    "attack": (
        OutputFile("results.jsonl", "one record per attacked batch, appended as it comes: the client's text "
                   "(reference), the reconstruction, the scores, the job's facts", private=True),
        OutputFile(SUMMARY, "kind, the job's settings, the mean of every score, count, samples, seconds; written at "
                   "the end, also when interrupted", private=True),
    ),
    "simulate": (
        OutputFile("rounds.jsonl", "one line per round: round, train_loss, eval_accuracy, eval_loss, epsilon, "
                   "seconds, failed_clients, unprotected_clients", private=True),
        OutputFile("leakage.jsonl", "one line per attacked update as jobs finish: round, client, method, reference, "
                   "reconstruction, scores, seconds, or error", private=True),
        OutputFile(SUMMARY, "kind, status (running/completed/interrupted/failed), accuracies, epsilon, mean "
                   "leakage, the settings; rewritten every round", private=True),
        OutputFile("simulate.png", "dev accuracy and leakage per round (scores only); written at the end"),
    ),
    "sweep": (
        OutputFile("tradeoff.csv", "one row per (defense, attack) setting over its seeds: epsilon, accuracy mean, "
                   "sd and cost against none (points, 95% Welch interval), ROUGE-1/2 mean and 95% t-interval over "
                   "every attacked update, n_updates, n_failed (fedsim.frontier.stats.COLUMNS); rewritten after "
                   "every run"),
        OutputFile("runs.csv", "one row per (defense, attack, seed) run: its accuracy, epsilon, mean leakage, "
                   "attacks scored and failed, whether --resume kept it, run_dir; rewritten after every run"),
        OutputFile("verdict.json", "the cheapest setting whose worst-case ROUGE-1 (upper end of its 95% interval, "
                   "over the attacks) is below 0.2, its accuracy cost, epsilon and closest attack, or the one that "
                   "leaks least; the rule; the printed lines", private=True),
        OutputFile("frontier.png", "leakage (ROUGE-1, ROUGE-2) against accuracy per setting with error bars, the "
                   "Pareto front, training loss per round per defense"),
        OutputFile(SUMMARY, "kind, status, the settings every run shares, defenses, attacks, seeds, runs, "
                   "runs_finished, rows, reused (runs kept from an earlier run by --resume), command, the verdict's "
                   "setting; rewritten after every run", private=True),
    ),
    "experiment": (
        OutputFile("{name}_examples.md", "reference and reconstruction pairs", private=True),  # before {name}.md
        OutputFile("{name}.csv", "one script's table or figure data (aggregates, no text)"),
        OutputFile("{name}.md", "the table in Markdown, with notes: scale, wall time, rows reused from an earlier run"),
        OutputFile("{name}.png", "the figure (0600 where it shows private tokens: fig3_pca)"),
        OutputFile("raw/{name}.jsonl", "one row per attacked sentence, with its reconstruction and scores",
                   private=True),
        OutputFile("raw/{name}_cell{cell}.txt", "one cell's sentences: the attack's text file", private=True),
        OutputFile(SUMMARY, "kind, and per script: rows, rows reused from an earlier run (--resume), status",
                   private=True),
    ),
}
HTML_REPORT = OutputFile("report.html", "fedleak report --html: the run as one self-contained page, private text "
                         "beside its reconstruction", private=True)
for _kind in KINDS:
    FILES[_kind] = (*FILES[_kind], HTML_REPORT)
REPORT = OutputFile("fedleak report --out FILE", "the Markdown report; it may quote private text", private=True)


def declared(kind: str, relative: str) -> OutputFile:
    """The declaration of a run's file; an undeclared file is a programming error."""
    for file in FILES[kind]:  # the first that matches: specific names come before general ones
        if file.matches(relative):
            return file
    raise ValueError(f"{relative!r} is not a declared output file of a {kind} run (fedsim.results.FILES)")


# --- writing ------------------------------------------------------------------------------------------------------
class RunDir:
    """A run directory of one kind: every write goes through here, with the declared file's mode."""

    def __init__(self, root: str | Path, kind: str) -> None:
        if kind not in FILES:
            raise ValueError(f"unknown kind of run {kind!r}; known: {', '.join(KINDS)}")
        self.root, self.kind = Path(root), kind

    def path(self, name: str) -> Path:
        declared(self.kind, name)
        return self.root / name

    def clear(self) -> None:
        """Remove the fixed-name files an earlier run of this kind left (a new run replaces it)."""
        for file in FILES[self.kind]:
            if "{" not in file.name:
                (self.root / file.name).unlink(missing_ok=True)

    def start(self, name: str) -> Path:
        """An empty file to append records to (replacing an old one)."""
        return self._write(name, "")

    def append(self, name: str, record: dict[str, Any]) -> None:
        """One JSON record, flushed (records are written 0600, like every JSON file)."""
        append_jsonl(self.path(name), record)

    def write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """``summary.json`` with the run's kind first, replaced atomically; returns what was written."""
        summary = {"kind": self.kind, **{k: v for k, v in summary.items() if k != "kind"}}
        path = self.path(SUMMARY)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            write_json(tmp, summary)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # only left when the write failed
        return summary

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]], columns: Sequence[str],
                  cell: Callable[[Any], Any] = lambda v: "" if v is None else v) -> Path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: cell(row.get(k)) for k in columns})
        return self._write(name, buffer.getvalue())

    def write_text(self, name: str, text: str) -> Path:
        return self._write(name, text)

    def save_figure(self, name: str, fig: Any, dpi: int = 120, private: bool = False) -> Path:
        """Save and close a figure; ``private`` can only add to the declaration (a figure that shows tokens)."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return save_figure(fig, path, private=private or declared(self.kind, name).private, dpi=dpi)

    def _write(self, name: str, text: str) -> Path:
        """Replace the file atomically with the declared mode (0600 if private, else the umask's default)."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if declared(self.kind, name).private else 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # only left when the write failed
        return path


def write_private_report(path: str | Path, text: str) -> None:
    """``fedleak report --out``: 0600, as the report may quote private text."""
    write_private_text(path, [text.rstrip("\n")])


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on a directory: experiment scripts running in parallel lanes share one summary.json."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def record_experiment(out: str | Path, name: str, facts: dict[str, Any]) -> dict[str, Any]:
    """Put one script's facts (rows, reused, ...) into the experiment directory's summary.json."""
    run = RunDir(out, "experiment")
    with _locked(run.root):
        summary = read_summary(run.root) or {}
        scripts = dict(summary.get("experiments") or {}) if summary.get("kind") == "experiment" else {}
        scripts[name] = {**facts, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return run.write_summary({"experiments": dict(sorted(scripts.items()))})


# --- reading ------------------------------------------------------------------------------------------------------
def read_summary(directory: str | Path) -> dict[str, Any] | None:
    """A run directory's summary.json, or None when it has none (or half of one)."""
    try:
        summary = json.loads((Path(directory) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def read_records(directory: str | Path, name: str) -> list[dict[str, Any]]:
    """The records of a JSONL file of a run ([] when it has none)."""
    path = Path(directory) / name
    return read_jsonl(path) if path.is_file() else []


def read_table(directory: str | Path, name: str) -> list[dict[str, str]]:
    with open(Path(directory) / name, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# Directories written before runs stated their kind: the file that tells each kind apart.
LEGACY_MARKERS = (("tradeoff.csv", "sweep"), ("rounds.jsonl", "simulate"), ("results.jsonl", "attack"))


@dataclass
class RunInfo:
    kind: str
    summary: dict[str, Any] | None
    note: str | None = None  # how the kind was found when summary.json does not state it


def read_run(directory: str | Path) -> RunInfo:
    """The kind of a run directory from its summary.json; older directories (no ``kind``) by their files."""
    d = Path(directory)
    summary = read_summary(d)
    kind = (summary or {}).get("kind")
    if kind in KINDS:
        return RunInfo(kind, summary)
    if kind is not None:
        raise UsageError(f"{str(d / SUMMARY)!r} states kind {kind!r}; fedleak knows {', '.join(KINDS)}")
    for marker, guess in LEGACY_MARKERS:
        if (d / marker).is_file():
            return RunInfo(guess, summary, f"{SUMMARY} states no kind (written by an older fedleak): read as a "
                                           f"{guess} directory because it holds {marker}.")
    raise UsageError(f"{str(d)!r} holds no fedleak results: expected {SUMMARY} with a kind ({', '.join(KINDS)}) "
                     "or, from an older fedleak, results.jsonl (attack), rounds.jsonl (simulate) or tradeoff.csv (sweep)")


# --- resume -------------------------------------------------------------------------------------------------------
def unit_key(fields: Mapping[str, Any], names: Sequence[str]) -> str:
    """What makes two units the same: equal values (as JSON) of the fields ``names``."""
    return json.dumps({k: fields.get(k) for k in names}, sort_keys=True, default=str)


class ReuseLedger:
    """What this process kept from earlier runs, per kind of unit: every published table states it."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}  # what -> [kept, asked]

    def reset(self) -> None:
        self.counts.clear()

    def add(self, what: str, kept: int, asked: int) -> None:
        count = self.counts.setdefault(what, [0, 0])
        count[0] += kept
        count[1] += asked

    def note(self) -> str:
        if not self.counts:
            return "Reused from an earlier run: nothing."
        return "Reused from an earlier run (--resume): " + ", ".join(
            f"{kept} of {asked} {what}(s)" for what, (kept, asked) in self.counts.items()) + "."


LEDGER = ReuseLedger()


class Resume:
    """The units an earlier run finished (raw rows, or the summaries of completed runs) that this run may keep.

    ``fields(unit)`` is what a unit is matched on; ``keep`` finds, for each wanted unit, the earlier one with the
    same values of ``names`` and counts kept and asked, here and in ``LEDGER``. Without ``--resume`` it is empty.
    """

    KEPT = "kept from the earlier run"

    def __init__(self, earlier: Iterable[dict[str, Any]], what: str,
                 fields: Callable[[dict[str, Any]], Mapping[str, Any]] = lambda unit: unit,
                 echo: Callable[[str], None] | None = None) -> None:
        self.earlier, self.what, self.fields = list(earlier), what, fields
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.kept = self.asked = 0

    @classmethod
    def rows(cls, path: str | Path, what: str, enabled: bool = True) -> "Resume":
        """The rows of an earlier run's JSONL file (none when not resuming or when it has no such file)."""
        path = Path(path)
        return cls(read_jsonl(path) if enabled and path.is_file() else [], what)

    @classmethod
    def runs(cls, directories: Iterable[str | Path], what: str, enabled: bool = True) -> "Resume":
        """The summaries of the completed simulate runs in ``directories``, matched on their settings."""
        summaries = [read_summary(d) for d in directories] if enabled else []
        done = [s for s in summaries if s and s.get("status") == "completed" and s.get("kind", "simulate") == "simulate"]
        return cls(done, what, fields=lambda summary: summary.get("settings") or {})

    def keep(self, wanted: Sequence[Mapping[str, Any]], names: Sequence[str],
             label: str | None = None) -> dict[int, dict[str, Any]]:
        """Index in ``wanted`` -> the earlier unit that is the same; says how many under ``label``."""
        done = {unit_key(self.fields(unit), names): unit for unit in self.earlier}
        keys = [unit_key(w, names) for w in wanted]
        kept = {i: done[k] for i, k in enumerate(keys) if k in done}
        self.kept += len(kept)
        self.asked += len(wanted)
        LEDGER.add(self.what, len(kept), len(wanted))
        if kept and label:
            self.echo(f"{label}: {len(kept)} {self.what}(s) {self.KEPT}")
        return kept

    def take(self, wanted: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any] | None:
        """The earlier unit that is the same as ``wanted``, else None."""
        return self.keep([wanted], names).get(0)


# --- simulate: the Recorder ---------------------------------------------------------------------------------------
LEAK_KEYS = ("rouge1", "rouge2", "rougeL", "recover_rate", "token_accuracy", "label_correct")
HONEST_KEYS = ("token_precision", "token_f1", "rouge1_random_pairing", "certified_share")  # adversary.metrics doc


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


class Recorder:
    """Writes a run's files as it goes and prints one progress line per round and a summary at the end."""

    def __init__(self, settings: Settings, echo: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.out = Path(settings.out).expanduser().resolve()
        self.files = RunDir(self.out, "simulate")
        self.out.mkdir(parents=True, exist_ok=True)
        self.files.clear()  # a new run replaces an old one in the same directory
        self.echo = echo or (lambda line: print(line, flush=True))
        self.started = time.perf_counter()
        self.initial: dict[str, float] | None = None
        self.rounds: list[dict[str, Any]] = []
        self.leaks: list[dict[str, Any]] = []
        self.status = "running"
        self.summary: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}  # run-level facts others add to the summary (privacy accounting)
        self.done = threading.Event()  # set when finish() has written everything

    def note(self, line: str) -> None:
        self.echo(line)

    def round(self, server_round: int, *, train_loss: float | None, eval_accuracy: float, eval_loss: float,
              seconds: float, failed: list[dict] | None = None, epsilon: float | None = None,
              attacks_submitted: int = 0, unprotected: list[int] | None = None) -> None:
        """One round's line and record; ``unprotected``: clients whose update this round carried no privacy
        guarantee although a defense was set (their epsilon is inf)."""
        s = self.settings
        if server_round == 0:
            self.initial = {"eval_accuracy": eval_accuracy, "eval_loss": eval_loss}
            self.echo(f"round 0/{s.rounds}  initial model            dev acc {eval_accuracy:.3f}  loss {eval_loss:.3f}")
            return
        row = {"round": server_round, "train_loss": train_loss, "eval_accuracy": eval_accuracy,
               "eval_loss": eval_loss, "epsilon": epsilon, "seconds": seconds,
               "failed_clients": failed or [], "unprotected_clients": unprotected or []}
        self.rounds.append(row)
        self.files.append("rounds.jsonl", row)
        line = (f"round {server_round}/{s.rounds}  train loss {_fmt(train_loss)}  dev acc {eval_accuracy:.3f}  "
                f"loss {eval_loss:.3f}  {seconds:5.1f} s")
        if epsilon is not None:
            line += f"  ε {epsilon:.3g}"
        if s.attack != "none":
            scored = [r for r in self.leaks if "error" not in r]
            line += f"  | attacks: {attacks_submitted} sent, {len(self.leaks)} done"
            if scored:
                line += f", ROUGE-1 so far {_mean([r['rouge1'] for r in scored]):.2f}"
        if unprotected:
            line += (f"\n  client(s) {', '.join(map(str, unprotected))} sent an update with no privacy guarantee "
                     f"(no bounded noise reported): epsilon = inf")
        for f in failed or []:
            line += f"\n  client on node {f['node']} failed: {f['reason'].strip().splitlines()[-1] if f['reason'].strip() else '?'}"
        self.echo(line)
        self._write_summary()

    def leakage(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.leaks.append(record)
            self.files.append("leakage.jsonl", record)

    def finish(self, status: str) -> dict[str, Any]:
        self.status = status
        self._write_summary()
        try:
            self.files.save_figure("simulate.png", plot(self.initial, self.rounds, self.leaks), dpi=110)
        except Exception as exc:  # noqa: BLE001 - a missing plot must not hide the results
            self.echo(f"(no plot: {type(exc).__name__}: {exc})")
        self.echo(describe(self.summary, self.leaks))
        self.done.set()
        return self.summary

    def _write_summary(self) -> None:
        scored = [r for r in self.leaks if "error" not in r]
        last = self.rounds[-1] if self.rounds else {}
        self.summary = self.files.write_summary({
            "status": self.status,
            "rounds_completed": len(self.rounds),
            "initial_accuracy": (self.initial or {}).get("eval_accuracy"),
            "final_accuracy": last.get("eval_accuracy"),
            "final_eval_loss": last.get("eval_loss"),
            "final_train_loss": last.get("train_loss"),
            "epsilon": last.get("epsilon"),
            **self.extra,
            "attacks": {"scored": len(scored), "errors": len(self.leaks) - len(scored)},
            **{key: _mean([r.get(key) for r in scored]) for key in LEAK_KEYS},
            # issue #11: failures count; a failed attack leaked nothing measurable, counted 0 beside the mean above
            "attacks_failed": len(self.leaks) - len(scored),
            "rouge1_with_failures_as_zero": _mean([0.0 if "error" in r else (r.get("rouge1") or 0.0)
                                                   for r in self.leaks]),
            **{key: _mean([r.get(key) for r in scored]) for key in HONEST_KEYS},
            "sequences_certified": sum(sum(bool(c) for c in r.get("certified") or []) for r in scored),
            "attack_seconds": _mean([r.get("seconds") for r in scored]),
            "mean_round_seconds": _mean([r["seconds"] for r in self.rounds]),
            "wall_seconds": time.perf_counter() - self.started,
            "out": str(self.out),
            "settings": self.settings.to_run_config(),
        })


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def _clip(text: str | None, limit: int = 200) -> str:
    """A reconstruction for the terminal: a guess of hundreds of junk tokens is cut (leakage.jsonl keeps it all)."""
    text = text or ""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text.split())} words in all)"


def bag_of_words_note(summary: dict[str, Any]) -> list[str]:
    """For an optimisation attack whose words came back without their order (ROUGE-2 under half of ROUGE-1):
    say so, and give the command that runs the worst-case attack on the same federation."""
    s = summary["settings"]
    r1, r2 = summary.get("rouge1"), summary.get("rouge2")
    if s["attack"] not in ("tag", "dlg") or r1 is None or r2 is None or r1 < 0.2 or r2 >= 0.5 * r1:
        return []
    values = {k.replace("-", "_"): v for k, v in s.items()}
    values.update(attack="best", out=f"{s['out'].rstrip('/')}-best")
    return [f"    {s['attack'].upper()} recovered the words more than their order (ROUGE-2 {r2:.2f} against ROUGE-1 "
            f"{r1:.2f}): largely a bag of words. The worst-case attack on the same federation:",
            f"      fedleak simulate{command_flags(Settings, values)}"]


def describe(summary: dict[str, Any], leaks: list[dict[str, Any]]) -> str:
    """The end-of-run text for someone who has never seen the tool."""
    s = summary["settings"]
    steps = 1 if s["mode"] == "fedsgd" else s["local-steps"]
    per_round = (f"one SGD step on {s['batch-size']} private example(s)" if steps == 1
                 else f"{steps} SGD steps on {s['batch-size']} private example(s) each")
    init = "pretrained" if s["init"] == "pretrained" else f"random init {s['init']}"
    lines = [
        "",
        f"{summary['status'].upper()} in {summary['wall_seconds']:.0f} s.",
        f"  {s['clients']} clients trained {s['model']} ({init}) together for {summary['rounds_completed']}/{s['rounds']} "
        f"rounds of {'FedSGD' if s['mode'] == 'fedsgd' else 'FedAvg'} on the '{s['dataset']}' data:",
        f"  each round, every client took {per_round} and sent its new weights to the server.",
    ]
    if summary["final_accuracy"] is not None:
        line = (f"  Global model on the dev split: accuracy {_fmt(summary['initial_accuracy']).strip()} before, "
                f"{summary['final_accuracy']:.3f} after round {summary['rounds_completed']}")
        if summary["initial_accuracy"] is not None and summary["final_accuracy"] - summary["initial_accuracy"] < 0.05:
            line += " (little learning yet: more rounds, larger batches or a pretrained model move it)"
        lines.append(line + ".")
    if s["attack"] != "none":
        att = summary["attacks"]
        lines.append(f"  The server followed the protocol but was curious: from each update it rebuilt the client's "
                     f"private text with {s['attack'].upper()} ({s['attack-iterations']} iterations"
                     + (f", at most {s['attack-time-budget']:g} s per update" if s.get("attack-time-budget") else "")
                     + ").")
        lines.append(f"    {att['scored']} updates attacked, {att['errors']} failed.")
        if att["scored"]:
            lines.append(f"    ROUGE-1 {summary['rouge1']:.2f}  ROUGE-2 {summary['rouge2']:.2f}  ROUGE-L "
                         f"{summary['rougeL']:.2f}  recover rate {summary['recover_rate']:.2f}   "
                         f"(means over the {att['scored']} scored; 1.00 = every word recovered)")
            if summary.get("token_f1") is not None:
                lines.append(f"    token F1 {summary['token_f1']:.2f} (penalises junk the recover rate ignores); "
                             f"{summary.get('sequences_certified', 0)} sequence(s) certified exact by the server")
            best = max((r for r in leaks if "error" not in r), key=lambda r: (r["rouge1"], -r["round"]))
            lines.append(f"    round {best['round']}, client {best['client']}:")
            for ref, rec in zip(best["reference"], best["reconstruction"]):
                lines.append(f"      private  : {ref}")
                lines.append(f"      recovered: {_clip(rec)}")
            lines += bag_of_words_note(summary)
        if att["errors"] and summary.get("rouge1_with_failures_as_zero") is not None:
            lines.append(f"    ROUGE-1 counting the {att['errors']} failed attack(s) as 0: "
                         f"{summary['rouge1_with_failures_as_zero']:.2f}")
        errors = [r for r in leaks if "error" in r]
        if errors:
            lines.append(f"    first failure: {errors[0]['error']}")
    lines.append(f"  Files: {summary['out']}/{{{', '.join(f.name for f in FILES['simulate'])}}}")
    lines.append("  (leakage.jsonl holds the private and recovered text: mode 0600)")
    return "\n".join(lines)


def plot(initial: dict | None, rounds: list[dict], leaks: list[dict]) -> Any:
    """Dev accuracy per round and the mean leakage (ROUGE-1/2) of the updates sent in each round, on one 0..1 axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    xs = ([0] if initial else []) + [r["round"] for r in rounds]
    ys = ([initial["eval_accuracy"]] if initial else []) + [r["eval_accuracy"] for r in rounds]
    ax.plot(xs, ys, "o-", color="tab:blue", label="dev accuracy (global model)")
    scored = [r for r in leaks if "error" not in r]
    per_round = sorted({r["round"] for r in scored})
    for key, style, size, label in (("rouge1", "s--", 9, "ROUGE-1 of the server's reconstructions"),
                                    ("rouge2", "^:", 6, "ROUGE-2 of the server's reconstructions")):
        if per_round:
            ax.plot(per_round, [_mean([r[key] for r in scored if r["round"] == k]) for k in per_round], style,
                    color="tab:red" if key == "rouge1" else "tab:purple", markersize=size, label=label)
    ax.set_xlabel("round")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(sorted(set(xs) | {r["round"] for r in scored}))
    ax.set_title("Federated training: accuracy and leakage per round")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig
