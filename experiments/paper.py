"""The TAG paper's reported numbers, read from ``../shared/paper/tag-paper-numbers.md``, and its claims tested on ours.

Each claim is a comparison between two settings of one of our tables ("A leaks more than B") or a ratio (TAG over
DLG). The verdict compares our two means with a Welch 95% interval of their difference, built from the n, mean and
std that our table CSVs hold:

* **confirms**: the interval lies entirely on the claimed side (for a ratio: TAG − k·DLG > 0);
* **refutes**: it lies entirely on the other side;
* **cannot tell**: it straddles zero — and when both settings sit at the 1.00 ceiling, the setting is too easy to
  test the claim at all (a harder setting is needed), which the verdict says.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import t as student_t

PAPER_NUMBERS = Path(__file__).resolve().parents[2] / "shared" / "paper" / "tag-paper-numbers.md"
CEILING = 0.99


def paper_tables(path: Path = PAPER_NUMBERS) -> dict[str, list[dict[str, str]]]:
    """Every Markdown table of the numbers file, keyed by its heading's first words ("Table II", "Fig. 5")."""
    if not path.is_file():
        return {}
    tables: dict[str, list[dict[str, str]]] = {}
    heading, header = "", None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading, header = line[3:].split(" — ")[0].strip(), None
        elif line.startswith("|") and not set(line) <= set("|- "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
                tables[heading] = []
            else:
                tables[heading].append(dict(zip(header, cells)))
        elif not line.startswith("|"):
            header = None if not line.strip() else header
    return tables


@dataclass(frozen=True)
class Stat:
    n: int
    mean: float
    std: float


def read_stats(csv_path: Path, key: dict[str, str], metric: str) -> Stat | None:
    """n, mean and std of ``metric`` in the row of a result CSV whose columns match ``key``."""
    if not csv_path.is_file():
        return None
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if all(row.get(k) == v for k, v in key.items()) and row.get("n", "").isdigit():
                std = float(row.get(f"{metric}_std") or 0.0)
                return Stat(int(row["n"]), float(row[f"{metric}_mean"]), 0.0 if math.isnan(std) else std)
    return None


def difference_interval(a: Stat, b: Stat, k: float = 1.0) -> tuple[float, float, float]:
    """(estimate, low, high) of a.mean − k·b.mean, Welch 95% interval (zero width when both stds are zero)."""
    estimate = a.mean - k * b.mean
    va, vb = a.std ** 2 / max(a.n, 1), (k * b.std) ** 2 / max(b.n, 1)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return estimate, estimate, estimate
    dof = (va + vb) ** 2 / ((va ** 2 / (a.n - 1) if a.n > 1 else 0) + (vb ** 2 / (b.n - 1) if b.n > 1 else 0) or 1e-12)
    half = float(student_t.ppf(0.975, max(dof, 1.0))) * se
    return estimate, estimate - half, estimate + half


def verdict(a: Stat | None, b: Stat | None, k: float = 1.0) -> tuple[str, str]:
    """(verdict, why) for the claim "a > k·b"."""
    if a is None or b is None:
        return "cannot tell", "not run"
    estimate, low, high = difference_interval(a, b, k)
    name = "difference" if k == 1 else f"ours − {k:g} × theirs"
    detail = f"{name} {estimate:+.3f}, 95% CI [{low:+.3f}, {high:+.3f}], n = {a.n} vs {b.n}"
    if a.mean >= CEILING and b.mean >= CEILING:
        return "cannot tell", f"both at the {CEILING:.2f} ceiling ({detail}): this setting is too easy to test it"
    if low > 0:
        return "confirms", detail
    if high < 0:
        return "refutes", detail
    return "cannot tell", f"the interval straddles zero ({detail})"


def fmt_pct(text: str | None) -> str:
    """A paper cell (a percentage) as a 0..1 number for our tables."""
    try:
        return f"{float(re.sub(r'[^0-9.]', '', text or '')) / 100:.3f}"
    except ValueError:
        return ""


def paper_note(table: str, path: Path = PAPER_NUMBERS) -> str:
    """The paper's rows of ``table`` as a Markdown block to print beside ours (percentages as 0..1 fractions, so the
    columns read like ours); a line saying so when the numbers file is not here."""
    rows = paper_tables(path).get(table)
    if not rows:
        prose = paper_section(table, path)
        return f"The paper's {table}: {prose}" if prose else f"The paper's {table}: not in {path}."
    header = list(rows[0])
    metric = {"Recover Rate", "ROUGE-1", "ROUGE-2", "ROUGE-L"}
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(fmt_pct(r[h]) if h in metric else r[h] for h in header) + " |" for r in rows]
    return f"The paper's {table} (as reported, percentages shown as fractions; its n is not stated):\n\n" + "\n".join(lines)


def paper_section(heading: str, path: Path = PAPER_NUMBERS) -> str:
    """The text under a heading of the numbers file (for results the paper reports in prose, such as Fig. 5)."""
    if not path.is_file():
        return ""
    sections = re.split(r"^## ", path.read_text(encoding="utf-8"), flags=re.M)
    for section in sections[1:]:
        title, _, body = section.partition("\n")
        if title.split(" — ")[0].strip() == heading:
            return " ".join(line.strip() for line in body.splitlines() if line.strip())
    return ""
