"""`fedleak report DIR --html`: one self-contained page that shows the leak.

For every attacked update the client's sentence stands above the server's reconstruction, the words the server
recovered marked in both (as the TAG paper's Table III does), next to the run's plots, accuracy, ε and the command
that reproduces the run. No network: CSS inline, images embedded as data URIs, one small inline script (sorting and
paging) allowed by a Content-Security-Policy hash, so nothing that came from data can run. Everything from data is
HTML-escaped. The page holds private text: it is written mode 0600.

A run with thousands of attacked updates stays readable: every update gets a row of scores, but only the
``max_examples`` most-leaking updates carry their text (the rest are counted, and ``leakage.jsonl`` has them all).
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from scipy.optimize import linear_sum_assignment

from fedsim.core.errors import UsageError
from fedsim.core.io import read_jsonl, write_private_text
from fedsim.frontier.verdict import read_verdict
from fedsim.results import RunDir, read_records, read_run, read_table
from fedsim.settings import AttackJob, Settings, command_flags

PAGE_SIZE = 50
MAX_EXAMPLES = 200


@dataclass
class RunView:
    """What a run directory holds, read once: the page is rendered from this."""

    kind: str
    directory: Path
    summary: dict[str, Any]
    updates: list[dict[str, Any]]  # attacked updates (simulate: leakage.jsonl; attack: results.jsonl)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)  # sweep rows
    plots: list[Path] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)  # a sweep's verdict.json


def load_run(directory: str | Path) -> RunView:
    """Read a run directory of any kind (``fedsim.results.read_run``: its ``summary.json`` states the kind)."""
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"results directory {str(d)!r} does not exist")
    info = read_run(d)
    summary = info.summary or {}
    plots = sorted(p for p in d.glob("*.png") if p.is_file())
    if info.kind == "sweep":
        table = read_table(d, "tradeoff.csv") if (d / "tradeoff.csv").is_file() else []
        # one row per run (runs.csv); a sweep from before --seeds had one run per tradeoff.csv row
        runs = read_table(d, "runs.csv") if (d / "runs.csv").is_file() else table
        updates = []
        for row in runs:
            run_dir = _run_dir(d, row.get("run_dir", ""))
            seed = f" / seed {row['seed']}" if row.get("seed") not in (None, "") else ""
            for record in read_records(run_dir, "leakage.jsonl"):
                updates.append({**record, "setting": f"{row.get('defense')} / {row.get('attack')}{seed}"})
        return RunView("sweep", d, summary, updates, table=table, plots=plots, verdict=read_verdict(d))
    if info.kind == "simulate":
        return RunView("simulate", d, summary, read_records(d, "leakage.jsonl"), rounds=read_records(d, "rounds.jsonl"),
                       plots=plots)
    if info.kind == "attack":
        return RunView("attack", d, summary, read_records(d, "results.jsonl"), plots=plots)
    updates = [{**r, "batch": path.stem} for path in sorted((d / "raw").glob("*.jsonl")) for r in read_jsonl(path)]
    return RunView("experiment", d, summary, updates, plots=plots)


def _run_dir(sweep_dir: Path, run_dir: str) -> Path:
    path = Path(run_dir)
    return path if path.is_dir() else sweep_dir / path.name


# --- text alignment ---------------------------------------------------------------------------------------------------
def mark_shared(text: str, other: str) -> str:
    """``text`` escaped, with each word that also occurs in ``other`` marked (counted: a word found once in ``other``
    is marked once)."""
    available = Counter(w.lower() for w in other.split())
    out = []
    for word in text.split():
        if available[word.lower()] > 0:
            available[word.lower()] -= 1
            out.append(f"<mark>{html.escape(word)}</mark>")
        else:
            out.append(html.escape(word))
    return " ".join(out)


def pair_sentences(references: list[str], reconstructions: list[str]) -> list[tuple[str, str]]:
    """Each reference beside the reconstruction that shares most words with it (best one-to-one assignment)."""
    if not references or not reconstructions:
        return [(r, "") for r in references]
    overlap = [[sum((Counter(a.lower().split()) & Counter(b.lower().split())).values()) for b in reconstructions]
               for a in references]
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    paired = dict(zip(rows.tolist(), cols.tolist()))
    return [(ref, reconstructions[paired[i]] if i in paired else "") for i, ref in enumerate(references)]


# --- rendering --------------------------------------------------------------------------------------------------------
SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows), page = 0;
  var size = parseInt(table.dataset.page, 10), nav = document.getElementById(table.id + '-nav');
  function show() {
    rows.forEach(function (r, i) { r.hidden = i < page * size || i >= (page + 1) * size; });
    if (nav) nav.querySelector('span').textContent = 'rows ' + (rows.length ? page * size + 1 : 0) + '-' +
      Math.min(rows.length, (page + 1) * size) + ' of ' + rows.length;
  }
  if (nav) {
    nav.hidden = rows.length <= size;
    nav.querySelector('.prev').onclick = function () { if (page > 0) { page--; show(); } };
    nav.querySelector('.next').onclick = function () { if ((page + 1) * size < rows.length) { page++; show(); } };
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    if (!th.classList.contains('sort')) return;
    th.onclick = function () {
      var down = th.dataset.dir !== 'desc';
      th.dataset.dir = down ? 'desc' : 'asc';
      rows.sort(function (a, b) {
        var x = parseFloat(a.cells[col].dataset.v), y = parseFloat(b.cells[col].dataset.v);
        return down ? y - x : x - y;
      });
      rows.forEach(function (r) { body.appendChild(r); });
      page = 0; show();
    };
  });
  show();
});
""".strip()

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top}
th{background:#f4f4f4;text-align:left}th.sort{cursor:pointer}th.sort:after{content:" \\2195";color:#999}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
mark{background:#ffd54f;padding:0 1px}.ref{color:#222}.rec{color:#555}.label{color:#888;font-size:12px}
.facts td:first-child{width:260px;color:#555}img{max-width:min(100%,820px);border:1px solid #eee}
code{background:#f4f4f4;padding:1px 4px;word-break:break-all}.note{color:#666;font-size:13px}
.nav button{margin-right:6px}.err{color:#b00020}
""".strip()


def render_html(view: RunView, max_examples: int = MAX_EXAMPLES) -> str:
    """The whole page as a string."""
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'")
    title = f"fedleak {view.kind}: {view.directory.name}"
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p class='note'>This page holds the clients' private text and what the server reconstructed from their "
        "updates; it is written for you only (mode 0600). Marked words: in the private text, the words the server "
        "recovered; in the reconstruction, the words that are right.</p>",
        _facts(view), _plots(view), _sweep_table(view), _rounds_table(view), _updates(view, max_examples),
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _facts(view: RunView) -> str:
    s, rows = view.summary, []
    rows.append(("kind", view.kind))
    if s.get("status"):
        rows.append(("status", s["status"]))
    if view.kind == "simulate":
        rows.append(("rounds", f"{s.get('rounds_completed')} of {s.get('settings', {}).get('rounds')}"))
        rows.append(("dev accuracy (global model)", f"{_num(s.get('initial_accuracy'))} before, "
                                                    f"{_num(s.get('final_accuracy'))} after"))
    attacks = s.get("attacks") if isinstance(s.get("attacks"), dict) else {}  # a sweep lists attack names there
    scored = attacks.get("scored", len([u for u in view.updates if not u.get("error")]))
    rows.append(("attacked updates", f"{scored} scored, {attacks.get('errors', _errors(view))} failed"))
    for key, label in (("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("recover_rate", "Recover Rate")):
        if s.get(key) is not None:
            rows.append((f"mean {label}", _num(s[key])))
    if view.kind == "sweep" and view.verdict.get("text"):
        rows.append(("verdict", " ".join(str(line).strip() for line in view.verdict["text"])))
    if view.kind != "sweep":
        eps = s.get("epsilon")
        explanation = s.get("epsilon_explanation") or ("no client-side defense: no privacy guarantee"
                                                       if eps is None else "")
        rows.append(("ε (δ = " + _num(s.get("delta", 1e-5)) + ")",
                     f"{'none' if eps is None else _num(eps)} — {explanation}".rstrip(" —")))
    command = reproduce_command(view)
    if command:
        rows.append(("reproduce with", f"<code>{html.escape(command)}</code>"))
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{v if k == 'reproduce with' else html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<h2>Run</h2><table class='facts'>{body}</table>"


def _errors(view: RunView) -> int:
    return sum(1 for u in view.updates if u.get("error"))


def reproduce_command(view: RunView) -> str:
    """The command line that reruns this run: the options that differ from their defaults."""
    s = view.summary
    if view.kind == "simulate" and isinstance(s.get("settings"), dict):
        return "fedleak simulate" + command_flags(Settings, {k.replace("-", "_"): v for k, v in s["settings"].items()})
    if view.kind == "attack":
        return "fedleak attack" + command_flags(AttackJob, s)
    if view.kind == "sweep" and isinstance(s.get("settings"), dict):
        return sweep_command(s["settings"], s.get("defenses", []), s.get("attacks", []), len(s.get("seeds") or [0]),
                             view.directory)
    return ""


def sweep_command(settings: dict[str, Any], defenses: Sequence[str], attacks: Sequence[str], seeds: int,
                  out: str | Path) -> str:
    """The ``fedleak sweep`` command line of these shared settings (``run_config`` keys), settings and seeds."""
    shared = {k.replace("-", "_"): v for k, v in settings.items()}
    return ("fedleak sweep" + command_flags(Settings, shared) + f" --out {shlex.quote(str(out))}"
            + "".join(f" --defense {shlex.quote(d)}" for d in defenses)
            + "".join(f" --attack {shlex.quote(a)}" for a in attacks) + (f" --seeds {seeds}" if seeds > 1 else ""))


def _plots(view: RunView) -> str:
    images = []
    for path in view.plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        images.append(f"<p><img alt='{html.escape(path.name)}' src='data:image/png;base64,{data}'></p>")
    return "<h2>Plots</h2>" + "".join(images) if images else ""


def _sweep_table(view: RunView) -> str:
    if not view.table:
        return ""
    headers = list(view.table[0])
    head = "".join(f"<th class='sort'>{html.escape(h)}</th>" for h in headers)
    rows = "".join("<tr>" + "".join(_cell(r.get(h)) for h in headers) + "</tr>" for r in view.table)
    return (f"<h2>Settings: leakage against accuracy and ε</h2><table class='sortable' id='settings' "
            f"data-page='{PAGE_SIZE}'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{_nav('settings')}")


def _rounds_table(view: RunView) -> str:
    if not view.rounds:
        return ""
    keys = ("round", "train_loss", "eval_accuracy", "eval_loss", "epsilon", "seconds")
    head = "".join(f"<th class='sort'>{k}</th>" for k in keys)
    rows = "".join("<tr>" + "".join(_cell(r.get(k)) for k in keys) + "</tr>" for r in view.rounds)
    return (f"<h2>Rounds</h2><table class='sortable' id='rounds' data-page='{PAGE_SIZE}'><thead><tr>{head}</tr>"
            f"</thead><tbody>{rows}</tbody></table>{_nav('rounds')}")


def _updates(view: RunView, max_examples: int) -> str:
    if not view.updates:
        return "<h2>Attacked updates</h2><p>None: the server did not attack (honest server) or no job finished.</p>"
    order = sorted(range(len(view.updates)), key=lambda i: -_float(view.updates[i].get("rouge1")))
    with_text = set(order[:max_examples])
    extra = "setting" if view.kind == "sweep" else ("round" if view.kind == "simulate" else "batch")
    clients = view.kind in ("simulate", "sweep")
    head = (f"<th class='sort'>#</th><th>{extra}</th>" + ("<th>client</th>" if clients else "")
            + "<th>attack</th><th class='sort'>ROUGE-1</th><th class='sort'>ROUGE-2</th>"
              "<th>private text (marked: recovered) / reconstruction (marked: right)</th>")
    rows = []
    for i, u in enumerate(view.updates):
        cells = [_cell(i + 1), f"<td>{html.escape(str(u.get(extra, '')))}</td>"]
        if clients:
            cells.append(f"<td>{html.escape(str(u.get('client', '')))}</td>")
        cells += [f"<td>{html.escape(str(u.get('method', '')))}</td>", _cell(u.get("rouge1")), _cell(u.get("rouge2"))]
        cells.append(f"<td>{_texts(u) if i in with_text else _omitted()}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = ("" if len(view.updates) <= max_examples else
            f"<p class='note'>Text shown for the {max_examples} most-leaking of {len(view.updates)} updates; the "
            f"others show their scores only (all of it is in the run's JSONL files).</p>")
    return (f"<h2>Attacked updates ({len(view.updates)})</h2>{note}<p class='note'>Click a marked column to sort. "
            f"</p><table class='sortable' id='updates' data-page='{PAGE_SIZE}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{_nav('updates')}")


def _texts(update: dict[str, Any]) -> str:
    if update.get("error"):
        return f"<span class='err'>attack failed: {html.escape(str(update['error']))}</span>"
    refs, recs = _as_list(update.get("reference")), _as_list(update.get("reconstruction"))
    blocks = []
    for ref, rec in pair_sentences(refs, recs):
        blocks.append(f"<div class='ref'><span class='label'>private</span> {mark_shared(ref, rec)}</div>"
                      f"<div class='rec'><span class='label'>recovered</span> {mark_shared(rec, ref)}</div>")
    return "".join(blocks)


def _omitted() -> str:
    return "<span class='note'>text not shown (see the JSONL files)</span>"


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else ([] if value is None else [str(value)])


def _nav(table_id: str) -> str:
    return (f"<p class='nav' id='{table_id}-nav' hidden><button class='prev'>previous</button>"
            f"<button class='next'>next</button><span></span></p>")


def _float(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return x if not math.isnan(x) else -math.inf


def _num(value: Any) -> str:
    x = _float(value)
    if value is None or x == -math.inf and value != "-inf":
        return "n/a" if value is None else str(value)
    return "inf" if math.isinf(x) else f"{x:.3g}"


def _cell(value: Any) -> str:
    x = _float(value)
    sort_value = x if math.isfinite(x) else (1e308 if x > 0 else -1e308)
    text = _num(value) if isinstance(value, (int, float)) or _is_number(value) else html.escape(str(value or ""))
    return f"<td class='num' data-v='{sort_value}'>{text}</td>"


def _is_number(value: Any) -> bool:
    return isinstance(value, str) and _float(value) != -math.inf


def write_report(directory: str | Path, out: str | Path | None = None, max_examples: int = MAX_EXAMPLES) -> Path:
    """Render ``DIR/report.html`` (or ``out``), mode 0600; returns its path."""
    view = load_run(directory)
    page = render_html(view, max_examples)
    if out:
        write_private_text(out, [page])
        return Path(out)
    return RunDir(view.directory, view.kind).write_text("report.html", page + "\n")
