"""matplotlib without a display, set up once."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; before pyplot is imported anywhere
import matplotlib.pyplot as plt  # noqa: E402


def pyplot():
    """matplotlib's pyplot on the Agg backend."""
    return plt


def save_figure(fig, path: str | Path, private: bool = False, dpi: int = 120) -> Path:
    """Save and close a figure; ``private`` (it shows reconstructed or private tokens): mode 0600."""
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    if private:
        os.chmod(path, 0o600)
    return path
