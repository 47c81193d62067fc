"""LAMP's discrete step: edits of the decoded tokens, kept when the gradient distance of the edited tokens drops.

Continuous optimisation finds the right tokens long before the right order: a token's embedding is pulled toward
its own row wherever it sits. LAMP therefore tries reorderings of the current decoding (swap two tokens, move a
token, move a span, put a prefix at the end) and scores each by the gradient distance of the *decoded* tokens
(real embeddings), not of the continuous dummy: what is scored is what would be answered.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from typing import Sequence

import torch

from adversary.engine import GradientMatcher
from fedsim.core.errors import UsageError

MOVES = ("swap", "move", "span", "prefix", "replace")


def propose(n: int, kind: str, rng: random.Random) -> list[int]:
    """A reordering of ``n`` free positions: new[k] = old[order[k]] (LAMP's four moves)."""
    order = list(range(n))
    if kind == "swap":
        i, j = rng.sample(range(n), 2)
        order[i], order[j] = order[j], order[i]
    elif kind == "move":
        i = rng.randrange(n)
        rest = order[:i] + order[i + 1:]
        j = rng.randrange(n)
        order = rest[:j] + [i] + rest[j:]
    elif kind == "span":
        b, e = sorted(rng.sample(range(n + 1), 2))
        piece, rest = order[b:e], order[:b] + order[e:]
        p = rng.randrange(len(rest) + 1)
        order = rest[:p] + piece + rest[p:]
    elif kind == "prefix":
        i = rng.randrange(1, n)
        order = order[i:] + order[:i]
    return order


class DiscreteMoves:
    """The hook: LAMP's discrete step every ``every`` iterations from ``start`` on (and at the last one).

    ``vocabulary`` (the token set, when it restricts decoding) enables ``replace``, our addition to LAMP's
    reorderings: a position gets another token of the set, preferably a token of the set that the decoding
    misses, put where a repeated token stands (reorderings cannot fix "the sat sat" for "the cat sat")."""

    def __init__(self, every: int, candidates: int, start: int, last: int, seed: int,
                 kinds: Sequence[str] = MOVES, vocabulary: torch.Tensor | None = None, polish: int = 0) -> None:
        bad = [k for k in kinds if k not in MOVES]
        if bad or not kinds:
            raise UsageError(f"unknown discrete moves {bad or kinds}; accepted: {', '.join(MOVES)}")
        self.every, self.candidates, self.start, self.last = every, candidates, start, last
        self.kinds = tuple(k for k in kinds if k != "replace" or vocabulary is not None)
        self.rng = random.Random(seed)
        self.vocabulary = vocabulary.tolist() if vocabulary is not None else []
        self.polish, self.steps, self.accepted, self.evaluations = polish, 0, 0, 0

    def __call__(self, matcher: GradientMatcher, iteration: int) -> None:
        """A step every ``every`` iterations; at the last one, up to ``polish`` more while they still help."""
        if self.every <= 0 or not self.kinds or iteration < self.start:
            return
        if iteration == self.last:  # polish: wider searches while they still help
            for _ in range(1 + self.polish):
                if not self.step(matcher, self.candidates * 4):
                    break
        elif iteration % self.every == 0:
            self.step(matcher)

    def score(self, matcher: GradientMatcher, ids: torch.Tensor) -> float:
        """Gradient distance of decoded ids (B, L) placed as real embeddings at the free positions (without the
        attack's regulariser: candidates are judged by the gradient alone)."""
        self.evaluations += 1
        config = matcher.config
        matcher.config = dataclasses.replace(config, regularizer=None)
        try:
            return float(matcher.distance(matcher.embedding.detach()[ids], create_graph=False).detach())
        finally:
            matcher.config = config

    def replacement(self, row: list[int], batch_tokens: list[int]) -> tuple[int, int]:
        """(index in the row, new token) for a ``replace`` move. A token of the set that the decoding misses must
        go where a repeated token stands (every position holds a token of the set); with none missing, a
        repeated token is still the likeliest to be one too many ("clear of of rocks"), so it is tried first
        three times in four."""
        counts = Counter(batch_tokens)
        missing = [t for t in self.vocabulary if t not in counts]
        repeated = [i for i, t in enumerate(row) if counts[t] > 1]
        if repeated and (missing or self.rng.random() < 0.75):
            return self.rng.choice(repeated), self.rng.choice(missing or self.vocabulary)
        return self.rng.randrange(len(row)), self.rng.choice(missing or self.vocabulary)

    def step(self, matcher: GradientMatcher, candidates: int | None = None) -> bool:
        """Try ``candidates`` edits of each sequence in turn; keep the best one that lowers the distance."""
        self.steps += 1
        changed = False
        free = matcher.layout.free
        ids = matcher.decoder(matcher.state.dummy)
        current = self.score(matcher, ids)
        for b in range(ids.shape[0]):
            positions = free[b].nonzero().flatten()
            n = positions.numel()
            row = ids[b, positions].tolist()
            seen, best, best_edit = {tuple(row)}, current, None
            for k in range(self.candidates if candidates is None else candidates):
                if time.perf_counter() > matcher.deadline:  # the attack's time budget (GradientMatcher.run)
                    break
                kind = self.kinds[k % len(self.kinds)]
                if kind == "replace" and n >= 1:
                    edit = (None, self.replacement(row, ids[free].tolist()))
                    new_row = list(row)
                    new_row[edit[1][0]] = edit[1][1]
                elif kind != "replace" and n >= 2:
                    edit = (propose(n, kind, self.rng), None)
                    new_row = [row[i] for i in edit[0]]
                else:
                    continue
                if tuple(new_row) in seen:  # a no-op (a repeated token, the same order)
                    continue
                seen.add(tuple(new_row))
                candidate = ids.clone()
                candidate[b, positions] = torch.tensor(new_row, dtype=ids.dtype)
                value = self.score(matcher, candidate)
                if value < best:
                    best, best_edit = value, edit
            if best_edit is not None:
                self.apply(matcher, b, positions, *best_edit)
                ids = matcher.decoder(matcher.state.dummy)
                current, changed = best, True
                self.accepted += 1
        return changed

    @torch.no_grad()
    def apply(self, matcher: GradientMatcher, b: int, positions: torch.Tensor, order: list[int] | None,
              replace: tuple[int, int] | None) -> None:
        """Edit the continuous dummy so that it decodes to the accepted candidate: permute its vectors, or put
        the new token's embedding (at the replaced vector's norm) in place."""
        dummy = matcher.state.dummy
        if order is not None:
            dummy[b, positions] = dummy[b, positions[order]].clone()
        if replace is not None:
            pos, token = int(positions[replace[0]]), replace[1]
            row = matcher.embedding.detach()[token]
            dummy[b, pos] = row * dummy[b, pos].norm() / row.norm().clamp_min(1e-12)
