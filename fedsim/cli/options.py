"""Options shared by several subcommands, declared once."""

from __future__ import annotations

import argparse

from fedsim.core.data import TASKS
from fedsim.core.errors import UsageError
from fedsim.core.models import MODEL_NAMES


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_model_options(parser: argparse.ArgumentParser, model: str = "tinybert4", init: str = "normal:0.02") -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=model, help=f"zoo name ({', '.join(MODEL_NAMES)}), hub id or local directory (default: {model})")
    g.add_argument("--init", default=init, help=f"normal:STD, uniform:RANGE or pretrained (default: {init})")
    g.add_argument("--vocab", default="bert-base-uncased",
                   help="tokenizer vocabulary: bert-base-uncased (offline), bert-base-chinese, or a vocab.txt path")
    g.add_argument("--max-length", type=positive_int, default=64, help="truncate sequences to this many tokens (default: 64)")


def add_data_options(parser: argparse.ArgumentParser, dataset: str = "pii", split: str = "train") -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=dataset, help=f"{', '.join(TASKS)} (default: {dataset})")
    g.add_argument("--split", default=split, choices=("train", "dev"), help=f"(default: {split})")
    g.add_argument("--data-dir", default=None, help="local GLUE directory (CoLA/, SST-2/, RTE/); else FEDLEAK_GLUE_DIR, else the hub")


def add_run_options(parser: argparse.ArgumentParser, out: str) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="same seed, same results (default: 0)")
    g.add_argument("--out", default=out, help=f"output directory (default: {out})")


def check_dataset(name: str) -> str:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise UsageError(f"unknown dataset {name!r}; accepted: {', '.join(TASKS)}")
    return key
