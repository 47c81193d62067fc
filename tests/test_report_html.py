"""`fedleak report DIR --html`: a self-contained page, checked in a real browser (headless Chromium)."""

from __future__ import annotations

import html
import json
import shutil
import stat
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.core.io import append_jsonl, write_json
from fedsim.core.plots import pyplot, save_figure
from fedsim.report_html import load_run, mark_shared, pair_sentences, render_html, reproduce_command, write_report
from fedsim.settings import Settings

ATTACK_SCRIPT = "<script>document.title='pwned'</script>"
ATTACK_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"
UPDATES = 60  # more than one page (50 rows)


def simulate_dir(root: Path) -> Path:
    """A simulate run directory as the Recorder writes it, with hostile text in the clients' data."""
    d = root / "sim"
    d.mkdir()
    settings = Settings(model="tiny", init="normal:0.02", rounds=3, out=str(d), defense=["clip:c=1", "noise:sigma=0.5"])
    write_json(d / "summary.json", {"kind": "simulate", "status": "completed", "rounds_completed": 3,
                                    "initial_accuracy": 0.5, "final_accuracy": 0.7, "epsilon": 12.5,
                                    "delta": 1e-5, "epsilon_explanation": "client-level DP of each update",
                                    "attacks": {"scored": UPDATES, "errors": 0}, "rouge1": 0.5,
                                    "settings": settings.to_run_config()})
    for r in (1, 2, 3):
        append_jsonl(d / "rounds.jsonl", {"round": r, "train_loss": 0.7, "eval_accuracy": 0.6, "eval_loss": 0.6,
                                          "epsilon": 4.0 * r, "seconds": 1.0})
    for i in range(UPDATES):
        hostile = {UPDATES - 1: ATTACK_SCRIPT, UPDATES - 2: ATTACK_IMG}.get(i, "")  # among the most leaking
        ref = f"anna smith paid {i} dollars {hostile}"
        append_jsonl(d / "leakage.jsonl", {"round": 1 + i % 3, "client": i % 2, "method": "tag",
                                           "reference": [ref], "reconstruction": [f"anna paid {i} euros"],
                                           "rouge1": i / UPDATES, "rouge2": 0.1})
    fig, ax = pyplot().subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, d / "simulate.png")
    return d


def test_marks_and_pairs_words():
    assert mark_shared("anna paid 5 dollars", "paid anna 7") == "<mark>anna</mark> <mark>paid</mark> 5 dollars"
    assert mark_shared("a <b>", "<b>") == "a <mark>&lt;b&gt;</mark>"
    assert pair_sentences(["the cat sat", "a dog ran"], ["dog ran a", "cat the sat"]) == [
        ("the cat sat", "cat the sat"), ("a dog ran", "dog ran a")]


def test_page_is_private_escaped_self_contained_and_paged(tmp_path):
    d = simulate_dir(tmp_path)
    path = write_report(d, max_examples=10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    page = path.read_text(encoding="utf-8")
    assert ATTACK_SCRIPT not in page and html.escape(ATTACK_SCRIPT) in page
    assert "onerror=\"document" not in page
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")  # nothing fetched
    assert page.count("<span class='label'>private</span>") == 10  # text for the 10 most-leaking updates only
    assert "Text shown for the 10 most-leaking of 60 updates" in page
    assert "--defense clip:c=1 --defense noise:sigma=0.5" in reproduce_command(load_run(d))
    assert "12.5" in page and "client-level DP of each update" in page


def test_cli_writes_the_page_for_an_attack_run(tmp_path, capsys):
    d = tmp_path / "att"
    d.mkdir()
    write_json(d / "summary.json", {"kind": "attack", "model": "tiny", "method": "tag", "iterations": 30.0,
                                    "rouge1": 1.0, "count": 1})
    append_jsonl(d / "results.jsonl", {"batch": 0, "method": "tag", "reference": ["hello world"],
                                       "reconstruction": ["world hello"], "rouge1": 1.0, "rouge2": 0.0})
    assert main(["report", str(d), "--html"]) == 0
    page = (d / "report.html").read_text(encoding="utf-8")
    assert "<mark>hello</mark> <mark>world</mark>" in page
    assert "fedleak attack --model tiny --iterations 30" in page


def test_a_directory_that_is_no_run_is_one_line_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--html"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path) in err


class _Dom(HTMLParser):
    """Rows of the updates table after the page's own script ran: all of them, and those it hid (paging)."""

    def __init__(self) -> None:
        super().__init__()
        self.table, self.rows, self.hidden, self.marks = None, 0, 0, 0
        self.attributes: list[str] = []  # every attribute name in the document

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.attributes += list(attrs)
        if tag == "table":
            self.table = attrs.get("id")
        if tag == "tr" and self.table == "updates":
            self.rows += 1
            self.hidden += "hidden" in attrs
        if tag == "mark":
            self.marks += 1


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_in_headless_chromium(tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium); the browser check did not run")
    d = simulate_dir(tmp_path)
    page = write_report(d)
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    parsed = _Dom()
    parsed.feed(dom)
    assert parsed.rows == UPDATES + 1  # the header row and one row per attacked update
    assert parsed.hidden == UPDATES - 50  # the page's own script ran: it shows 50 rows per page
    assert parsed.marks > 0  # recovered words highlighted
    assert "<title>fedleak simulate: sim</title>" in dom  # no script from the data ran (it would set 'pwned')
    assert "data-pwned" not in parsed.attributes and "onerror" not in parsed.attributes
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in dom  # shown as text
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, cwd=tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000
    (tmp_path / "dom.json").write_text(json.dumps({"rows": parsed.rows, "hidden": parsed.hidden}))


def test_a_sweep_page_has_its_settings_table_and_every_run_s_updates(tmp_path):
    d = tmp_path / "sweep"
    run = simulate_dir(tmp_path)  # one run of the sweep
    d.mkdir()
    write_json(d / "summary.json", {"kind": "sweep", "status": "completed", "attacks": ["tag"], "defenses": ["none"],
                                    "settings": {"model": "tiny", "rounds": 3}})
    (d / "tradeoff.csv").write_text(f"defense,attack,epsilon,final_accuracy,rouge1,run_dir\nnone,tag,inf,0.5,0.5,{run}\n")
    page = render_html(load_run(d))
    assert "Settings: leakage against accuracy" in page and f"Attacked updates ({UPDATES})" in page
    assert "fedleak sweep --model tiny --rounds 3 --out" in page and "--defense none --attack tag" in page
