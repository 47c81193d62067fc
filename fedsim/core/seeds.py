"""Seeds in one place: same seed, same results.

Every random choice of a run derives its generator from the run's seed plus the coordinates that name it (round,
client, batch, purpose), through numpy's ``SeedSequence``: streams are independent and no two sites can collide.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import set_seed


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators (transformers' ``set_seed``)."""
    set_seed(int(seed) % 2**32)


def rng(*parts: int) -> np.random.Generator:
    """A numpy generator fixed by ``parts`` (e.g. the run's seed, the round, the client)."""
    return np.random.default_rng([int(p) % 2**64 for p in parts])


def derive_seed(*parts: int) -> int:
    """A non-negative int seed fixed by ``parts``: for an attack, a batch's dummy, a client's noise."""
    return int(rng(*parts).integers(2**31 - 1))


def torch_generator(*parts: int) -> torch.Generator:
    """A torch generator fixed by ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def batch_seed(seed: int, index: int) -> int:
    """The attack seed of batch ``index`` of a ``fedleak attack`` run. Linear rather than ``derive_seed`` so that
    the results committed under ``experiments/results/`` stay reproducible bit for bit."""
    return (int(seed) * 1_000_003 + int(index)) % (2**63)
