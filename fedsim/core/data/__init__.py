"""Task data: GLUE (CoLA, SST-2, RTE) from the hub or a local GLUE-layout directory, and the built-in `pii` set.

Every task is a ``datasets.Dataset`` with columns ``text``, ``label`` and, for sentence pairs, ``text_pair``.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from fedsim.core.data.glue import GLUE_TASKS, load_glue
from fedsim.core.data.partition import partition
from fedsim.core.data.pii import generate_pii
from fedsim.core.errors import UsageError

TASKS = (*GLUE_TASKS, "pii")
SPLITS = ("train", "dev")


@dataclass(frozen=True)
class TaskData:
    """A task's split: the examples plus the facts a model and a client need about them."""

    name: str
    split: str
    dataset: datasets.Dataset
    num_labels: int

    @property
    def is_pair(self) -> bool:
        return "text_pair" in self.dataset.column_names

    def __len__(self) -> int:
        return len(self.dataset)


def load_task(name: str, split: str = "train", data_dir: str | None = None, seed: int = 0) -> TaskData:
    """Load one split of a task. ``data_dir`` (or ``FEDLEAK_GLUE_DIR``) selects local GLUE files over the hub."""
    key = name.lower().replace("-", "")
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    if key == "pii":
        return TaskData("pii", split, generate_pii(split=split, seed=seed), num_labels=2)
    if key not in GLUE_TASKS:
        raise UsageError(f"unknown dataset {name!r}; accepted: {', '.join(TASKS)}")
    return TaskData(key, split, load_glue(key, split, data_dir), num_labels=2)


__all__ = ["TASKS", "SPLITS", "TaskData", "load_task", "partition", "generate_pii"]
