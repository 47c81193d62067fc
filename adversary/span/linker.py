"""The linker of `span` (B > 1): which candidate tokens form one sequence.

The first FFN's input-weight gradient spans each position's attention output, a function of its whole sequence.
Sequences of each length (positions whose pool holds [SEP]) are assembled by coordinate descent on their mean
distance to that span (single-position changes; when those are stuck, exchanges of two positions' tokens, then
a change of the sequence's bag by one token with its tokens reassigned to positions, :meth:`Linker._best_rebag`),
from random starts, then from starts pinned to each (position, token), alternating with random starts at the
length whose descents came closest (with unknown lengths most candidate lengths are wrong ones); the first start
at each length takes every position's closest member. Every other descent moves one position a step (the best
single change): taking every improving change at once is faster where sentences differ, but where they share most
words it lands in mixtures of them. A sequence below sqrt(eps32) (the geometric mean of eps32
and 1), or on a derived gradient (whose error moves true sequences off the span) one :data:`ISOLATION` times below
all its single-token changes, that explains a token's gradient is settled in the ledger, whose pools then shrink;
one in the span that explains none waits (each of its tokens may be in another unsettled sequence too): it is
tried again after each settle, and in pairs with the other waiting ones. Settling is not certifying: only the
reproduction test at the end certifies.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from adversary.case import Observation
from adversary.span.ledger import Ledger
from adversary.span.subspace import Candidate, Span
from fedsim.core.train import EPS32

PAIRED = 32  # waiting sequences tried in pairs (the closest to the span): pairs grow as its square
# A derived gradient's error moves a true sequence off the span, to 1e-4..4e-4 at the first step of a minilm-l6
# FedAvg update (E = 2, B = 2, SST-2; sqrt(eps32) is 3.5e-4), while every single-token change of it stays from 6e-3
# (37-60x further); the second step's sequences, which drifted, sit 2-4x below theirs. Measured, not derived.
ISOLATION = 10.0
REBAG = 4  # bags one token away that :meth:`Linker._best_rebag` reorders in full (the closest once placed)
REBAG_MOST = 4096  # more bags than this (long sequences, large pools) are not tried: each costs an assignment
UNPLACEABLE = 1e6  # an assignment's cost for a token its position's pool does not hold
SHORTLIST = 3  # changes per position a descent step scores in full, chosen by their position's own output


class Descent(NamedTuple):
    """Where a descent ended: the sequence, its distance to the span, and the distance of its nearest single-token
    change when it ended at a local minimum of those (NaN when it stopped for another reason)."""

    seq: tuple[Candidate, ...]
    distance: float
    nearest: float

    def isolated(self) -> bool:
        """A minimum :data:`ISOLATION` times below every single-token change (:func:`assemble`)."""
        return self.distance * ISOLATION <= self.nearest  # False for NaN


class Linker:
    """Scores candidate sequences by the mean distance of their first-layer attention outputs (the first FFN's
    inputs, a function of the whole sequence) to the row space of that FFN's input weight gradient.

    Each (position, candidate)'s layer input and query/key/value are computed once; scoring a sequence is then
    only the attention mixing, the output projection and LayerNorm (float32, like the client's forward)."""

    def __init__(self, obs: Observation, span2: Span, pools: list[list[Candidate]]) -> None:
        base = obs.model.base_model
        self.attn = base.encoder.layer[0].attention
        self.basis = span2.basis.float()  # float32 projections err ~1e-6, far below the sqrt(eps32) cut
        self.calls = 0
        # A derived gradient (its error published): the error moves true sequences off the span (isolation settles
        # them, :func:`assemble`) and separates true tokens from wrong ones at their own position (measured on
        # minilm-l6 FedAvg). An exact one at random init does not (every member sits in the span there): the
        # shortlist steered tinybert4's consecutive B = 8 FedSGD batch (exact without it) into mixtures.
        self.derived = obs.gradient_error is not None
        self.index = {(p, c): i for i, (p, c) in enumerate((p, c) for p, pool in enumerate(pools) for c in pool)}
        keys = list(self.index)
        with torch.no_grad():
            x = base.embeddings(input_ids=torch.tensor([[c[0] for _, c in keys]]),
                                token_type_ids=torch.tensor([[c[1] for _, c in keys]]),
                                position_ids=torch.tensor([[p for p, _ in keys]]))[0]
            sa = self.attn.self
            self.feats = [x, sa.query(x), sa.key(x), sa.value(x)]

    @torch.no_grad()
    def score(self, seqs: list[list[Candidate]], at: slice = slice(None)) -> torch.Tensor:
        """Mean distance to the span of each sequence's attention outputs (0: consistent with the gradient), over
        the positions ``at`` (default all; ``slice(0, 1)``, the [CLS] output alone, reads the sequence's context, a
        function of its bag of tokens, at 1/L of the cost)."""
        self.calls += len(seqs)
        idx = torch.tensor([[self.index[(p, c)] for p, c in enumerate(q)] for q in seqs])
        x, q, k, v = (f[idx] for f in self.feats)
        x, q = x[:, at], q[:, at]
        sa, so = self.attn.self, self.attn.output
        n, length, _ = k.shape
        heads, size = sa.num_attention_heads, sa.attention_head_size
        q = q.reshape(n, -1, heads, size).transpose(1, 2)
        k, v = (t.view(n, length, heads, size).transpose(1, 2) for t in (k, v))
        ctx = torch.softmax(q @ k.transpose(-1, -2) * size ** -0.5, dim=-1) @ v
        y = so.LayerNorm(so.dense(ctx.transpose(1, 2).reshape(n, x.shape[1], -1)) + x)
        y = y / y.norm(dim=-1, keepdim=True)
        return (y - (y @ self.basis) @ self.basis.T).norm(dim=-1).mean(dim=1).double()

    @torch.no_grad()
    def own_distance(self, seq: list[Candidate], moves: list[tuple[int, Candidate]]) -> torch.Tensor:
        """For each single change (p, c) of ``seq``, the distance to the span of position p's own output alone: the
        residual connection makes it the change's main effect, at ~1/L of the cost of :meth:`score` (its shortlist)."""
        sa, so = self.attn.self, self.attn.output
        heads, size = sa.num_attention_heads, sa.attention_head_size
        cur = torch.tensor([self.index[(p, c)] for p, c in enumerate(seq)])
        new = torch.tensor([self.index[m] for m in moves])
        at = torch.tensor([p for p, _ in moves])
        xm, qm, km, vm = (f[new] for f in self.feats)
        keys, values = (f[cur].view(len(seq), heads, size) for f in self.feats[2:])
        qm, km, vm = (t.view(len(moves), heads, size) for t in (qm, km, vm))
        logits = torch.einsum("mhd,lhd->mhl", qm, keys)
        logits[torch.arange(len(moves)), :, at] = (qm * km).sum(-1)  # the changed position's own key
        attn = torch.softmax(logits * size ** -0.5, dim=-1)
        ctx = torch.einsum("mhl,lhd->mhd", attn, values)
        ctx = ctx + attn[torch.arange(len(moves)), :, at][..., None] * (vm - values[at])  # and its own value
        y = so.LayerNorm(so.dense(ctx.reshape(len(moves), -1)) + xm)
        y = y / y.norm(dim=-1, keepdim=True)
        return (y - (y @ self.basis) @ self.basis.T).norm(dim=-1).double()

    def _shortlist(self, seq: list[Candidate], moves: list[tuple[int, Candidate]]) -> list[tuple[int, Candidate]]:
        """The :data:`SHORTLIST` changes per position whose own output comes closest to the span (all of them when
        there are no more than that)."""
        if len(moves) <= SHORTLIST * len({p for p, _ in moves}):
            return moves
        own = self.own_distance(seq, moves).tolist()
        per_pos: dict[int, list[tuple[float, int]]] = {}
        for i, ((p, _), v) in enumerate(zip(moves, own)):
            per_pos.setdefault(p, []).append((v, i))
        return [moves[i] for ranked in per_pos.values() for _, i in sorted(ranked)[:SHORTLIST]]

    def descend(self, seq: list[Candidate], pools: list[list[Candidate]], sweeps: int | None = None,
                stop: float = 0.0, deadline: float = math.inf, steepest: bool = False) -> Descent:
        """Descent over single-position changes, scored in one batch per step: take every improving change at once
        when that is better than the best single one (errors add up nearly independently), else that one; with
        ``steepest``, always the best single one (slower, but it does not jump into mixtures of sentences that
        share most words, :func:`assemble`). Steps
        score, on a derived gradient, a shortlist per position (:meth:`_shortlist`); only a step whose shortlist
        holds no improvement scores every change, so a local minimum (and :class:`Descent`'s nearest change) is one
        of all of them. Stops below ``stop``, at a local minimum, after ``sweeps`` steps (default: 12; on a derived
        gradient up to the length, since from the closest members a 53-token sentence was 29 changes away, and
        still 9 after 12 steps) or past ``deadline`` (perf_counter)."""
        best = float(self.score([seq])[0])
        if sweeps is None:  # steepest moves one position a step: from a random start most of them, then swaps
            sweeps = 3 * len(seq) if steepest else max(12, len(seq)) if self.derived else 12
        short = self.derived
        for _ in range(sweeps):
            if best < stop or time.perf_counter() > deadline:
                break
            moves = [(p, c) for p, pool in enumerate(pools) if len(pool) > 1 for c in pool if c != seq[p]]
            if not moves:
                break
            listed = self._shortlist(seq, moves) if short else moves
            trial = [seq[:p] + [c] + seq[p + 1:] for p, c in listed]
            d = self.score(trial)
            if len(listed) < len(moves) and not bool((d < best).any()):
                short = False  # the shortlist found nothing: this step scores every change
                continue
            short, moves = self.derived, listed
            per_pos: dict[int, tuple[float, Candidate]] = {}
            for (p, c), v in zip(moves, d.tolist()):
                if v < best and v < per_pos.get(p, (float("inf"), c))[0]:
                    per_pos[p] = (v, c)
            if not per_pos:  # a local minimum of single changes: exchange two positions' tokens, or change its bag
                swapped = self._best_swap(seq, pools, best) or self._best_rebag(seq, pools, best)
                if swapped is None:
                    return Descent(tuple(seq), best, float(d.min()))
                seq, best = swapped
                continue
            j = int(torch.argmin(d))
            seq_one, d_one = trial[j], float(d[j])
            if len(per_pos) > 1 and not steepest:
                combined = [per_pos[p][1] if p in per_pos else c for p, c in enumerate(seq)]
                d_all = float(self.score([combined])[0])
                if d_all < d_one:
                    seq_one, d_one = combined, d_all
            seq, best = seq_one, d_one
        return Descent(tuple(seq), best, math.nan)

    def _reorder(self, seq: list[Candidate], allowed: list[set[Candidate]], rounds: int = 3) -> list[Candidate]:
        """``seq``'s tokens in the order that puts each position's own output closest to the span in the context of
        the current order, re-solved in the context of each new order until it stays."""
        bag = list(seq)
        for _ in range(rounds):
            kinds = sorted(set(bag))
            moves = [(p, c) for p in range(len(bag)) for c in kinds if c in allowed[p]]
            at = dict(zip(moves, self.own_distance(seq, moves).tolist()))
            cost = np.array([[at.get((p, c), UNPLACEABLE) for c in bag] for p in range(len(bag))])
            rows, cols = linear_sum_assignment(cost)
            order = [bag[j] for j in cols[np.argsort(rows)]]
            if order == seq:
                break
            seq = order
        return seq

    def _best_rebag(self, seq: list[Candidate], pools: list[list[Candidate]], best: float
                    ) -> tuple[list[Candidate], float] | None:
        """The best sequence one token away from ``seq``'s bag (or its own bag), each bag in its best order, below
        ``best``. Near-uniform attention makes each position's output a function of its own token and the bag of
        the sequence, so where sentences share most words a descent stops in a bag one word off, its words arranged
        so that the missing one fits only where another sits (no single change or exchange of two leaves it). Each
        bag is first placed with the fewest moves (an assignment: staying costs 0, moving 1) and ranked by its [CLS]
        output's distance (its context); the :data:`REBAG` closest are reordered by their positions' own outputs
        (:meth:`_reorder`). None past :data:`REBAG_MOST` bags."""
        kinds = sorted({c for pool in pools for c in pool})
        changing = [p for p in range(len(seq)) if len(pools[p]) > 1]
        if 1 + len(changing) * (len(kinds) - 1) > REBAG_MOST:  # each position keeps its own token out
            return None
        allowed = [set(pool) for pool in pools]
        col = {c: j for j, c in enumerate(kinds)}
        fits = np.array([[c in allowed[p] for c in kinds] for p in range(len(seq))])
        stay = np.eye(len(seq), dtype=bool)
        bags = [list(seq)] + [seq[:p] + [c] + seq[p + 1:] for p in changing for c in kinds if c != seq[p]]
        placed: list[list[Candidate]] = []
        for bag in bags:
            ok = fits[:, [col[c] for c in bag]]
            cost = np.where(ok, np.where(stay, 0.0, 1.0), UNPLACEABLE)
            rows, cols = linear_sum_assignment(cost)
            if cost[rows, cols].sum() < UNPLACEABLE:
                placed.append([bag[j] for j in cols[np.argsort(rows)]])
        if not placed:
            return None
        first = torch.cat([self.score(placed[i:i + 1024], at=slice(0, 1)) for i in range(0, len(placed), 1024)])
        trial = [self._reorder(placed[int(i)], allowed) for i in torch.argsort(first)[:REBAG]]
        d = self.score(trial)
        j = int(torch.argmin(d))
        return (trial[j], float(d[j])) if float(d[j]) < best else None

    def _best_swap(self, seq: list[Candidate], pools: list[list[Candidate]], best: float
                   ) -> tuple[list[Candidate], float] | None:
        """The best exchange of two positions' tokens (each allowed at the other's position) below ``best``:
        words in the wrong order trap single changes, since moving one word alone repeats it."""
        allowed = [set(pool) for pool in pools]
        swaps = [(p, q) for p in range(len(seq)) for q in range(p + 1, len(seq))
                 if seq[p] != seq[q] and seq[q] in allowed[p] and seq[p] in allowed[q]]
        if not swaps:
            return None
        trial = [[seq[q] if i == p else seq[p] if i == q else c for i, c in enumerate(seq)] for p, q in swaps]
        d = self.score(trial)
        j = int(torch.argmin(d))
        return (trial[j], float(d[j])) if float(d[j]) < best else None


@dataclass
class Assembly:
    """What :func:`assemble` found: ``sequences`` (certified first, then the best uncertified minima), their linker
    distances, the labels of the certified ones, how many are certified, descents run, and whether the deadline
    cut the search."""

    sequences: list[list[Candidate]]
    distances: list[float]
    labels: list[int]
    certified: int
    descents: int
    out_of_time: bool


def assemble(obs: Observation, ledger: Ledger, linker: Linker, sep: int, seed: int, restarts: int,
             budget: int, deadline: float = math.inf, patience: int | None = None, patient_after: int = 1
             ) -> Assembly:
    """Certified sequences one at a time: for each length (a position whose pool holds [SEP]; or the public
    lengths), descents from random starts, then from starts pinned to each (position, token) of the current pools
    (exact positions first); a sequence under sqrt(eps32) (the geometric mean of float32 precision and 1) that
    explains a token's gradient is settled in the ledger and the pools recomputed. One that explains none waits:
    its tokens may all be in other unsettled sequences (neighbouring sentences share words), so it is tried again
    after each settle, and in pairs with the other waiting ones. Unfilled slots get the best uncertified minima.
    With unknown lengths, starts go first to every length, then alternate between pinned ones and random ones at
    the length whose descents came closest to the span. At most ``budget`` descents in all, none started past
    ``deadline`` (a ``time.perf_counter()`` value); with ``patience``, none once that many in a row settled nothing
    after ``patient_after`` sequences were settled (the caller peels what was found off the gradient and searches
    the rest). A derived gradient (its error published) also settles a sequence that is only *isolated*: a minimum
    :data:`ISOLATION` times below all its single-token changes (certification is the caller's final check)."""
    rng = np.random.default_rng(seed)
    cert = math.sqrt(EPS32)
    derived = linker.derived
    left = {n: obs.seq_lengths.count(n) for n in set(obs.seq_lengths)} if obs.seq_lengths is not None else None
    found: list[tuple[Candidate, ...]] = []
    labels: list[int] = []
    minima: dict[tuple[Candidate, ...], float] = {}
    waiting: list[tuple[Candidate, ...]] = []  # in the span, explaining no token yet
    descents, out_of_time, last_settle = 0, False, 0

    def closest_end(ends: list[int]) -> int:
        """The length whose descents came closest to the span, among sequences not yet found or waiting."""
        best = {e: math.inf for e in ends}
        for q, d in minima.items():
            if len(q) - 1 in best and q not in found and q not in waiting:
                best[len(q) - 1] = min(best[len(q) - 1], d)
        return min(ends, key=lambda e: (best[e], -e))

    def attempts(pools: list[list[Candidate]], resolved: list[bool], ends: list[int]):
        if not ends:
            return
        # Lengths whose [SEP] lies closest to the span first: on 2 minilm-l6 FedAvg updates the 4 true ends ranked
        # first, ahead of 30-40 others; with 1-2 s per descent of 50 tokens, the order decides what is found.
        if derived:  # (an exact gradient's distances are all float32 rounding: no order to read)
            ends = sorted(ends, key=lambda e: min(ledger.distance.get((e, c), math.inf)
                                                  for c in pools[e] if c[0] == sep))
        for e in ends if derived else []:  # first from each position's closest member: a derived gradient's true
            yield e, {}, True  # tokens rank first at most positions while their distances overlap wrong ones (FedAvg)
        for _ in range(restarts):
            for e in ends:
                yield e, {}, False
        todo = sorted((not resolved[p], -p, p, c) for p, pool in enumerate(pools) for c in pool if p > 0)
        pinned = ((e, {p: c}) for *_, p, c in todo for e in ends if p < e or (p == e and c[0] == sep))
        for e, pin in pinned:  # each pinned start, then a random one at the likeliest length (unknown lengths
            yield e, pin, False  # waste most starts on lengths no sequence has; descents there stay far from the span)
            yield closest_end(ends), {}, False
        while True:
            yield closest_end(ends), {}, False

    def fits(group: list[tuple[Candidate, ...]]) -> bool:
        """Room in the batch (and, with public lengths, for these lengths) for ``group``."""
        if len(found) + len(group) > obs.batch_size or any(q in found for q in group):
            return False
        return left is None or all(left.get(n, 0) >= k for n, k in Counter(map(len, group)).items())

    def accept(seq: tuple[Candidate, ...] | None) -> list[tuple[tuple[Candidate, ...], int, torch.Tensor]]:
        """``seq`` (or, for None, any waiting sequence) when it explains a token's gradient, alone or in a pair
        with a waiting one (the closest :data:`PAIRED` of them); [] when none does."""
        singles = [seq] if seq is not None else list(waiting)
        for q in singles:
            if fits([q]):
                label, rows, explained = ledger.explain(list(q))
                if explained:
                    return [(q, label, rows)]
        near = sorted(waiting, key=minima.get)[:PAIRED]
        pairs = [(seq, q) for q in near if q != seq] if seq is not None else list(itertools.combinations(near, 2))
        for pair in pairs:
            if fits(list(pair)):
                ys, rows, explained = ledger.explain_group([list(q) for q in pair])
                if explained:
                    return list(zip(pair, ys, rows))
        return []

    while len(found) < obs.batch_size and descents < budget and not out_of_time:
        new = accept(None) if waiting and found else []  # the last settle may have freed a waiting sequence
        pools, resolved = ledger.pools()
        ends = [e for e in range(1, len(pools)) if any(t == sep for t, _ in pools[e])]
        if left is not None:
            ends = [e for e in ends if left.get(e + 1, 0) > 0]
        subs = {}
        for e in ends:
            sub = [list(pools[p]) for p in range(e + 1)]
            sub[e] = [c for c in sub[e] if c[0] == sep]
            for p in range(1, e):
                sub[p] = [c for c in sub[p] if c[0] != sep] or sub[p]
            if all(sub):
                subs[e] = sub
        for e, pinned, greedy in [] if new else attempts(pools, resolved, list(subs)):
            if descents >= budget or (patience is not None and len(found) >= patient_after
                                      and descents - last_settle >= patience):
                break
            if time.perf_counter() > deadline:
                out_of_time = True
                break
            descents += 1
            sub = [[pinned[p]] if p in pinned else pool for p, pool in enumerate(subs[e])]
            start = [min(pool, key=lambda c, p=p: ledger.distance.get((p, c), 0.0)) if greedy else
                     pool[int(rng.integers(len(pool)))] for p, pool in enumerate(sub)]
            # Every other descent from a random or pinned start is steepest: on a template batch (B = 8 built-in
            # pii sentences sharing most words, tinybert4) 11 of 24 such descents ended on a true sentence, 0 of 24
            # with every improving change at once, which is faster where sentences differ (module doc).
            steepest = not greedy and descents % 2 == 0
            descent = linker.descend(start, sub, stop=cert, deadline=deadline, steepest=steepest)
            seq, d = descent.seq, descent.distance
            minima[seq] = min(d, minima.get(seq, float("inf")))
            if (d < cert or (derived and descent.isolated())) and seq not in found and seq not in waiting:
                new = accept(seq)
                if new:
                    break
                waiting.append(seq)
        if not new:
            break
        last_settle = descents
        for seq, label, rows in new:
            found.append(seq)
            labels.append(label)
            ledger.settle(list(seq), rows)
            if seq in waiting:
                waiting.remove(seq)
            if left is not None:
                left[len(seq)] -= 1
    n_cert = len(found)
    rest = sorted((q for q in minima if q not in found), key=minima.get)
    rest = rest[: obs.batch_size - n_cert]
    chosen = found + rest
    return Assembly([list(q) for q in chosen], [minima[q] for q in chosen], labels, n_cert, descents, out_of_time)
