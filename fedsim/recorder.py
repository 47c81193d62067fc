"""A `simulate` run as it goes: the ``Recorder`` (files through ``fedsim.results.RunDir``, one progress line per
round), the end-of-run text a first-time user reads (``describe``), and the run's figure (``plot``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fedsim.core.plots import pyplot
from fedsim.results import FILES, RunDir, code_version, without_text
from fedsim.settings import Settings, command_flags

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
        self.code = code_version()  # the commit this run came from (runs resumed across commits differ)
        self.initial: dict[str, float] | None = None
        self.rounds: list[dict[str, Any]] = []
        self.leaks: list[dict[str, Any]] = []
        self.status = "running"
        self.summary: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}  # run-level facts others add to the summary (privacy accounting)
        self.done = threading.Event()  # set when finish() has written everything

    def note(self, line: str) -> None:
        self.echo(line)

    def round(self, server_round: int, *, train_loss: float | None, eval_accuracy: float | None,
              eval_loss: float | None,
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
        line = (f"round {server_round}/{s.rounds}  train loss {_fmt(train_loss)}  dev acc {_fmt(eval_accuracy)}  "
                f"loss {_fmt(eval_loss)}  {seconds:5.1f} s")
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
            self.files.append("scores.jsonl", without_text(record))

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
        evaluated = [r for r in self.rounds if r.get("eval_accuracy") is not None]  # --eval-every skips rounds
        last_eval = evaluated[-1] if evaluated else {}
        self.summary = self.files.write_summary({
            "status": self.status,
            "rounds_completed": len(self.rounds),
            "initial_accuracy": (self.initial or {}).get("eval_accuracy"),
            "final_accuracy": last_eval.get("eval_accuracy"),
            "final_accuracy_round": last_eval.get("round"),
            "final_eval_loss": last_eval.get("eval_loss"),
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
            "code": self.code,
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
                f"{summary['final_accuracy']:.3f} after round {summary.get('final_accuracy_round') or summary['rounds_completed']}")
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
    evaluated = [r for r in rounds if r.get("eval_accuracy") is not None]  # --eval-every skips rounds
    xs = ([0] if initial else []) + [r["round"] for r in evaluated]
    ys = ([initial["eval_accuracy"]] if initial else []) + [r["eval_accuracy"] for r in evaluated]
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
