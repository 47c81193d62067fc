"""Every output file of every command, the only code that writes them, and the one resume mechanism.

* ``FILES`` declares, per kind of run (attack, simulate, sweep, experiment), each file: its name, what it holds,
  and whether it is private (mode 0600: it holds client text or reconstructions; every JSON file is written 0600).
* ``RunDir`` writes a declared file of its kind and nothing else: records appended and flushed one by one (an
  interrupted run keeps what it had), summaries and tables replaced atomically (a reader never sees half a file).
  Every ``summary.json`` states the run's ``kind``; ``read_run`` reads it back (``fedleak report`` dispatches on it).
* ``Resume`` answers "which units of this run are already done with the same settings" for ``sweep --resume``
  (completed run directories) and the experiments' ``--resume`` (raw rows), and counts what it kept (``LEDGER``).
* ``fedsim.recorder.Recorder`` writes a ``simulate`` run's files through a ``RunDir`` as the federation goes.
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

from fedsim.core.errors import UsageError
from fedsim.core.io import append_jsonl, read_jsonl, write_json, write_private_text
from fedsim.core.plots import save_figure


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
        OutputFile("scores.jsonl", "leakage.jsonl without the text (TEXT_FIELDS): what a sweep reads, and what may "
                   "be shared or committed; appended with it (0600 like every JSON record file)", private=True),
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


TEXT_FIELDS = ("reference", "reconstruction")  # a leakage record's private and recovered text


def without_text(record: dict[str, Any]) -> dict[str, Any]:
    """A leakage record's figures only (scores.jsonl)."""
    return {k: v for k, v in record.items() if k not in TEXT_FIELDS}


def read_scores(directory: str | Path) -> list[dict[str, Any]]:
    """A simulate run's attacked updates, figures only: scores.jsonl, else (older runs) leakage.jsonl."""
    has_scores = (Path(directory) / "scores.jsonl").is_file()
    return read_records(directory, "scores.jsonl" if has_scores else "leakage.jsonl")


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


def code_version() -> str:
    """The fedleak source a run came from: the git commit of its checkout (``+dirty`` with uncommitted changes),
    or the installed version outside a checkout. Runs of a long experiment made in parts (``--resume``) may come
    from different commits; each run's summary says which."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:  # only the checkout's own .git: an installed copy may sit inside some other repository (a venv in it)
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0 and (root / ".git").exists():
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no",
                                    "--", "fedsim", "adversary", "defenses"], capture_output=True, text=True,
                                   timeout=10).stdout.strip()
            return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from fedsim import __version__

    return f"fedleak {__version__}"
