"""Library chatter off: load reports and per-map progress bars drown a run's own progress and summary."""

from __future__ import annotations

import datasets
import transformers


def quiet_libraries() -> None:
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
