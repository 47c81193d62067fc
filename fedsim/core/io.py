"""Result files. Anything that may hold reconstructed private text is created with mode 0600."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

PRIVATE_MODE = 0o600


def _open_private(path: Path, mode: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_MODE)
    os.chmod(path, PRIVATE_MODE)  # an existing file keeps its old mode otherwise
    return os.fdopen(fd, mode, encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    return value


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record and flush, so an interrupted run keeps what it had."""
    with _open_private(Path(path), "a") as fh:
        fh.write(json.dumps(_jsonable(record), ensure_ascii=False) + "\n")
        fh.flush()


def write_json(path: str | Path, obj: Any) -> None:
    with _open_private(Path(path), "w") as fh:
        json.dump(_jsonable(obj), fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_private_text(path: str | Path, lines: Iterable[str]) -> None:
    with _open_private(Path(path), "w") as fh:
        for line in lines:
            fh.write(line + "\n")
