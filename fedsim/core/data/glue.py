"""GLUE CoLA, SST-2 and RTE through `datasets`: from the hub, or from the original GLUE release layout on disk."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import datasets

from fedsim.core.errors import UsageError

GLUE_TASKS = ("cola", "sst2", "rte")
HUB_ID = "nyu-mll/glue"
ENV_DIR = "FEDLEAK_GLUE_DIR"

# Original GLUE release layout: folder, whether the file has a header, the column names, and the text columns.
_LAYOUT = {
    "cola": ("CoLA", False, ["source", "label", "original_label", "text"], ("text", None)),
    "sst2": ("SST-2", True, None, ("sentence", None)),
    "rte": ("RTE", True, None, ("sentence1", "sentence2")),
}
_RTE_LABELS = {"entailment": 0, "not_entailment": 1}


def glue_dir(data_dir: str | None) -> str | None:
    """The local GLUE directory: the explicit argument, else ``FEDLEAK_GLUE_DIR``, else None (use the hub)."""
    return data_dir or os.environ.get(ENV_DIR) or None


def load_glue(task: str, split: str, data_dir: str | None = None) -> datasets.Dataset:
    local = glue_dir(data_dir)
    return _load_local(task, split, Path(local)) if local else _load_hub(task, split)


def _load_local(task: str, split: str, root: Path) -> datasets.Dataset:
    folder, has_header, names, (col_a, col_b) = _LAYOUT[task]
    path = root / folder / f"{split}.tsv"
    if not path.is_file():
        raise UsageError(f"missing GLUE file {path}; expected the original GLUE layout ({folder}/{split}.tsv under --data-dir)")
    kwargs = dict(delimiter="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
    if not has_header:
        kwargs.update(header=None, names=names)
    try:
        ds = datasets.load_dataset("csv", data_files={split: str(path)}, split=split, **kwargs)
    except Exception as exc:  # pandas/pyarrow parse errors
        raise UsageError(f"malformed GLUE file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    needed = [c for c in (col_a, col_b, "label") if c]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise UsageError(f"malformed GLUE file {path}: missing column(s) {', '.join(missing)}; found {', '.join(ds.column_names)}")
    return _normalise(ds, task, col_a, col_b, path)


def _normalise(ds: datasets.Dataset, task: str, col_a: str, col_b: str | None, source: object) -> datasets.Dataset:
    def convert(row: dict) -> dict:
        label = row["label"]
        if task == "rte" and isinstance(label, str) and label in _RTE_LABELS:
            label = _RTE_LABELS[label]
        try:
            label = int(label)
        except (TypeError, ValueError):
            raise UsageError(f"malformed label {label!r} in {source}; expected 0/1" + (" or entailment/not_entailment" if task == "rte" else "")) from None
        out = {"text": str(row[col_a]).strip(), "label": label}
        if col_b:
            out["text_pair"] = str(row[col_b]).strip()
        return out

    keep = ["text", "label"] + (["text_pair"] if col_b else [])
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64"),
                                  **({"text_pair": datasets.Value("string")} if col_b else {})})
    return ds.map(convert, remove_columns=ds.column_names, features=features).select_columns(keep)


def _load_hub(task: str, split: str) -> datasets.Dataset:
    hub_split = "validation" if split == "dev" else split
    try:
        ds = datasets.load_dataset(HUB_ID, task, split=hub_split)
    except Exception as exc:
        raise UsageError(
            f"could not load {HUB_ID}/{task} from the hub ({type(exc).__name__}); "
            f"pass --data-dir DIR or set {ENV_DIR} to a local GLUE copy (CoLA/, SST-2/, RTE/)"
        ) from None
    col_a, col_b = {"cola": ("sentence", None), "sst2": ("sentence", None), "rte": ("sentence1", "sentence2")}[task]
    return _normalise(ds, task, col_a, col_b, f"{HUB_ID}/{task}")
