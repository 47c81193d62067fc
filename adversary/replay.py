"""Certifying a FedAvg reconstruction by replaying the client's local training.

A FedAvg update is (w_0 - w_E) / (lr * E): the mean of E gradients taken at drifting weights, one per local batch.
No single batch gradient of the E * B recovered sequences reproduces it (so `span`'s own check rightly fails), yet
the sequences can be exactly right. The server knows lr, E and B (it set them), so it can replay the client:
split the sequences into E ordered batches of B, run the client's own plain SGD (:mod:`fedsim.core.train`) from
the global weights, and judge the update that yields by the same yardstick and tolerance as a FedSGD batch
(:mod:`adversary.distance`). A replay within tolerance certifies every sequence of the update.

The split is unknown: every ordered split is tried ((E * B)! / (B!)^E of them: 6 for E = 2, B = 2; 120 for E = 5,
B = 1), in enumeration order, each with the attack's labels and then single label flips while they bring the replay
closer (a wrong label on the right split can look worse than the right labels on a wrong one), up to
``max_replays`` and the deadline. Past the cap the answer stays a guess and ``info`` says the search was cut.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from adversary.case import Observation
from adversary.distance import candidate_batch, reproduction_tolerance
from fedsim.core.train import batch_gradients, sgd_step


@dataclass
class ReplayResult:
    """The closest replay found: sequences in step order (batch 1 first), their labels, its yardstick distance."""

    passed: bool
    token_ids: list[list[int]]
    labels: list[int]
    distance: float
    replays: int
    exhausted: bool  # every split (and label flip) was tried
    info: dict = field(default_factory=dict)


def replayed_update(observation: Observation, token_ids: Sequence[Sequence[int]],
                    labels: Sequence[int]) -> dict[str, torch.Tensor]:
    """(w_0 - w_E) / (lr * E) after the client's E plain SGD steps on these sequences, batch k = the k-th B."""
    steps, lr = observation.local_steps, observation.learning_rate
    size = len(token_ids) // steps
    model = copy.deepcopy(observation.model)
    start = {n: p.detach().double().clone() for n, p in model.named_parameters() if n in observation.gradients}
    for k in range(steps):
        part = slice(k * size, (k + 1) * size)
        batch = candidate_batch(observation, token_ids[part], labels[part])
        sgd_step(model, batch_gradients(model, batch), lr)
    return {n: ((start[n] - p.detach().double()) / (lr * steps)) for n, p in model.named_parameters() if n in start}


def update_distance(observation: Observation, update: dict[str, torch.Tensor]) -> float:
    """1 - cosine(replayed update, observed update) over the observed tensors, in float64."""
    dot = sq_a = sq_b = 0.0
    for name, a in update.items():
        b = observation.gradients[name].double()
        dot += float((a * b).sum())
        sq_a += float(a.square().sum())
        sq_b += float(b.square().sum())
    return math.inf if sq_a == 0.0 or sq_b == 0.0 else 1.0 - dot / math.sqrt(sq_a * sq_b)


def ordered_splits(count: int, steps: int) -> Iterator[tuple[int, ...]]:
    """Every order of ``count`` items into ``steps`` batches of equal size, as a permutation (batch 1 first);
    orders that differ only inside a batch are the same split and come once."""
    size = count // steps

    def rest(left: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        if not left:
            yield ()
            return
        for first in itertools.combinations(left, size):
            remaining = tuple(i for i in left if i not in first)
            for tail in rest(remaining):
                yield first + tail

    yield from rest(tuple(range(count)))


def certify_by_replay(observation: Observation, token_ids: Sequence[Sequence[int]], labels: Sequence[int],
                      deadline: float = math.inf, max_replays: int = 256) -> ReplayResult:
    """The closest replay of the client's local training over splits, then label flips (module doc)."""
    steps = observation.local_steps
    if steps <= 1 or observation.learning_rate is None or len(token_ids) % steps or not all(token_ids):
        return ReplayResult(False, [list(q) for q in token_ids], list(labels), math.inf, 0, False,
                            {"reason": "not a FedAvg update of E * B recovered sequences"})
    tolerance = reproduction_tolerance(observation)
    best: tuple[float, tuple[int, ...], list[int]] = (math.inf, tuple(range(len(token_ids))), list(labels))
    replays, cut = 0, False
    started = time.perf_counter()

    def out_of_budget() -> bool:
        nonlocal cut
        cut = cut or replays >= max_replays or time.perf_counter() > deadline
        return cut

    def judge(order: tuple[int, ...], labs: list[int]) -> float:
        nonlocal replays
        replays += 1
        ids = [list(token_ids[i]) for i in order]
        return update_distance(observation, replayed_update(observation, ids, [labs[i] for i in order]))

    for order in ordered_splits(len(token_ids), steps):  # per split, labels by single flips while they help
        labs, distance = list(labels), None
        improved = True
        while improved and not out_of_budget():
            improved = False
            if distance is None:
                distance = judge(order, labs)
            for i, label in itertools.product(range(len(token_ids)), range(observation.num_labels)):
                if distance < tolerance or out_of_budget():
                    break
                if label == labs[i]:
                    continue
                trial = labs[:i] + [label] + labs[i + 1:]
                value = judge(order, trial)
                if value < distance:
                    labs, distance, improved = trial, value, True
        if distance is not None and distance < best[0]:
            best = (distance, order, labs)
        if best[0] < tolerance or out_of_budget():
            break
    distance, order, labs = best
    return ReplayResult(passed=distance < tolerance, token_ids=[list(token_ids[i]) for i in order],
                        labels=[labs[i] for i in order], distance=distance, replays=replays, exhausted=not cut,
                        info={"replay_distance": distance, "replay_tolerance": tolerance, "replays": replays,
                              "replay_search_complete": not cut,
                              "replay_seconds": time.perf_counter() - started})
