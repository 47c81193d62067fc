"""Split a dataset across clients: IID or Dirichlet over labels, deterministic per seed."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedsim.core.errors import UsageError, parse_float, parse_spec

ACCEPTED = "iid, dirichlet:ALPHA (ALPHA > 0)"


def partition(labels: Sequence[int], num_clients: int, spec: str = "iid", seed: int = 0) -> list[np.ndarray]:
    """Index arrays, one per client; every example lands in exactly one shard and no shard is empty."""
    labels = np.asarray(labels)
    if not isinstance(num_clients, (int, np.integer)) or num_clients <= 0:
        raise UsageError(f"number of clients must be a positive integer, got {num_clients!r}")
    if num_clients > len(labels):
        raise UsageError(f"cannot split {len(labels)} examples across {num_clients} clients")
    kind, value = parse_spec(spec, "partition", ACCEPTED)
    rng = np.random.default_rng(seed)
    if kind == "iid" and value is None:
        return [np.sort(s) for s in np.array_split(rng.permutation(len(labels)), num_clients)]
    if kind == "dirichlet":
        alpha = parse_float(value, "partition", spec, ACCEPTED)
        if not alpha > 0 or not np.isfinite(alpha):
            raise UsageError(f"bad partition {spec!r}: ALPHA must be a positive number; accepted: {ACCEPTED}")
        return _dirichlet(labels, num_clients, alpha, rng)
    raise UsageError(f"unknown partition {spec!r}; accepted: {ACCEPTED}")


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    # Standard label-skew split (Hsu et al. 2019): per class, shares ~ Dir(alpha); redraw while a shard is empty.
    for _ in range(100):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, part in enumerate(np.split(idx, cuts)):
                shards[client].extend(part.tolist())
        if all(shards):
            return [np.sort(np.asarray(s, dtype=int)) for s in shards]
    raise UsageError(f"dirichlet:{alpha} left a client with no data after 100 draws; use more data, fewer clients or a larger ALPHA")
