"""Subspace tests of `span`: the row space of a weight gradient, and which layer inputs lie in it.

The first layer's Q/K/V weight gradient is sum_i delta_i x_i^T over real positions, so its row space is spanned by
the layer's inputs x_i = LayerNorm(word[t] + pos[p] + type[s]); padding adds nothing. :func:`members` lists, per
position, the candidates (t, s) whose x lies in that span (distance read in float64).

Thresholds come from the gradient and float32 precision: rank at the largest singular-value drop that lands at
rounding level (eps32 * ||G||_F); membership below the subspace perturbation bound s[r]/s[r-1]. Noise makes the
gradient full rank, so the test fails instead of returning confident garbage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from adversary.case import Observation
from fedsim.core.train import EPS32

Candidate = tuple[int, int]  # (token id, segment id)


@dataclass
class Span:
    """Row space of a stacked weight gradient, with the rank and membership threshold derived from its spectrum."""

    basis: torch.Tensor  # d x rank, orthonormal, float64
    singular: torch.Tensor  # singular values / the largest
    rank: int
    passed: bool  # a drop to float32 rounding level that leaves a complement
    tol: float  # membership threshold on the relative distance
    vh: torch.Tensor  # all right singular vectors, to re-cut at another rank

    def with_rank(self, rank: int) -> "Span":
        """The same spectrum cut at another rank (not a passed test: the rank was chosen, not read)."""
        rank = min(rank, self.vh.shape[0])
        return Span(self.vh[:rank].T.contiguous(), self.singular, rank, False, self.tol, self.vh)

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """Relative distance of each row of x to the span (0 in it, ~1 far from it)."""
        x = x.double()
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        return (x - (x @ self.basis) @ self.basis.T).norm(dim=-1)


def gradient_span(grads: list[torch.Tensor], rank: int | None = None, error: float = 0.0) -> Span:
    """SVD of the stacked gradients (float64). The rank is the largest drop s[k-1]/s[k] among cuts whose first
    dropped value is at or below the gradient's precision: float32 rounding (eps32 * ||G||_F) plus ``error``, a
    bound on ||E||_F when the gradient was derived from rounded weights (every singular value of G + E beyond the
    true rank is at most ||E||_2 <= ||E||_F, Weyl). None such (noise), or no complement left, fails. Membership
    threshold: the subspace perturbation bound s[k]/s[k-1] (Wedin), which members stay under. Cuts whose last kept
    value is itself at rounding level are not drops."""
    m = torch.cat([g.detach().double().reshape(g.shape[0], -1) for g in grads])
    r_factor = torch.linalg.qr(m, mode="r")[1] if m.shape[0] > m.shape[1] else m  # same singular values, cheaper
    _, s, vh = torch.linalg.svd(r_factor, full_matrices=False)
    n = s.numel()
    rounding = EPS32 * float(torch.linalg.norm(m))
    floor = rounding + error
    rel = s / s[0].clamp_min(1e-300)
    if rank is None:
        ratios = s[:-1] / s[1:].clamp_min(1e-300)
        ratios[s[1:] > floor] = 0.0
        # Drops inside the rounding noise mean nothing: a near-zero last singular value (how small depends on the
        # CPU's LAPACK path) made the largest "drop" the final one on some machines, and the rank full.
        ratios[s[:-1] <= rounding] = 0.0
        k = int(torch.argmax(ratios)) + 1 if bool((ratios > 0).any()) else n
    else:
        k = min(rank, n)
    passed = rank is None and k <= n - 2 and float(s[k]) <= floor
    bound = float(s[k] / s[k - 1]) if k < n else 1.0
    return Span(basis=vh[:k].T.contiguous(), singular=rel, rank=k, passed=passed, tol=bound, vh=vh)


def linker_span(grad: torch.Tensor, max_tokens: int, error: float = 0.0) -> Span:
    """Span for the linker. Its spectrum has no clean drop at random init (the layer is nearly linear there), so
    keep at least as many directions as there can be real tokens (B x max length), leaving a fifth of the space
    as complement: true outputs must lie inside, and extra directions barely help wrong ones (measured)."""
    span = gradient_span([grad], error=error)
    n = span.singular.numel()
    rank = max(span.rank, min(max_tokens, n - n // 5))
    return span if rank == span.rank else span.with_rank(rank)


class LayerInputs:
    """The first layer's input for any (token, position, segment), as the model computes it."""

    def __init__(self, model: torch.nn.Module) -> None:
        emb = model.base_model.embeddings
        self.module = emb
        self.word = emb.word_embeddings.weight.detach()  # rows are taken to float64 when used
        self.pos = emb.position_embeddings.weight.detach()
        self.type = emb.token_type_embeddings.weight.detach()
        self.ln = emb.LayerNorm

    def raw(self, tokens: torch.Tensor, p: int | torch.Tensor, s: int | torch.Tensor) -> torch.Tensor:
        return self.word[tokens].double() + self.pos[p].double() + self.type[s].double()

    def x(self, tokens: torch.Tensor, p: int | torch.Tensor, s: int) -> torch.Tensor:
        w = self.ln.weight.detach().double() if self.ln.weight is not None else None
        b = self.ln.bias.detach().double() if self.ln.bias is not None else None
        return torch.nn.functional.layer_norm(self.raw(tokens, p, s), (self.word.shape[1],), w, b, self.ln.eps)

    def direction(self, tokens: torch.Tensor, p: int | torch.Tensor, s: int | torch.Tensor) -> torch.Tensor:
        """Unit vector LayerNorm's backward removes: the centred pre-LayerNorm input."""
        v = self.raw(tokens, p, s)
        v = v - v.mean(-1, keepdim=True)
        return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def param_name(model: torch.nn.Module, param: torch.nn.Parameter) -> str:
    """The name ``model.named_parameters()`` gives ``param`` (the key of its gradient)."""
    return next(n for n, p in model.named_parameters() if p is param)


def attention_names(obs: Observation, layer: int) -> list[str]:
    """Names of a layer's query/key/value weights."""
    attn = obs.model.base_model.encoder.layer[layer].attention.self
    return [param_name(obs.model, m.weight) for m in (attn.query, attn.key, attn.value)]


def attention_grads(obs: Observation, layer: int) -> list[torch.Tensor] | None:
    """A layer's observed query/key/value weight gradients, or None when any is missing."""
    names = attention_names(obs, layer)
    return [obs.gradients[n] for n in names] if all(n in obs.gradients for n in names) else None


def nonzero_rows(obs: Observation, param: torch.nn.Parameter) -> list[int] | None:
    """Rows of a parameter's observed gradient that are not zero, to its error (None without its gradient)."""
    name = param_name(obs.model, param)
    return obs.live_rows(name).tolist() if name in obs.gradients else None


MAX_MEMBERS = 256  # per position: more means the span holds (nearly) everything; only the closest are kept


def members(obs: Observation, span: Span, inputs: LayerInputs, vocab: torch.Tensor, length: int | None = None
            ) -> tuple[list[list[tuple[int, int, float]]], int]:
    """Per position, the (token, segment, distance) candidates inside the span, at most :data:`MAX_MEMBERS`
    (the closest). Positions: the first ``length`` (public lengths), else those up to the last non-zero
    position-gradient row (padding leaves them zero), else until a position has no member."""
    emb = inputs.module
    pos_rows = nonzero_rows(obs, emb.position_embeddings.weight)
    types = nonzero_rows(obs, emb.token_type_embeddings.weight) or list(range(inputs.type.shape[0]))
    limit = (max(pos_rows) + 1) if pos_rows else inputs.pos.shape[0]
    if length is not None:
        limit, pos_rows = min(limit, length), pos_rows or list(range(length))
    found: list[list[tuple[int, int, float]]] = []
    if pos_rows and vocab.numel() * limit * len(types) <= 500_000:  # all positions in one batch
        dist = torch.stack([span.distance(inputs.x(vocab[:, None], torch.arange(limit), s)) for s in types])
        for p in range(limit):
            hits = torch.nonzero(dist[:, :, p] < span.tol).tolist()
            found.append(sorted(((int(vocab[i]), types[j], float(dist[j, i, p])) for j, i in hits),
                                key=lambda c: c[2])[:MAX_MEMBERS])
        return found, limit
    for p in range(limit):
        row = []
        for s in types:
            dist = span.distance(inputs.x(vocab, p, s))
            inside = torch.nonzero(dist < span.tol).squeeze(1)
            if inside.numel() > MAX_MEMBERS:
                inside = inside[torch.topk(dist[inside], MAX_MEMBERS, largest=False).indices]
            for i in inside.tolist():
                row.append((int(vocab[i]), s, float(dist[i])))
        if not row and not pos_rows:
            break
        found.append(sorted(row, key=lambda c: c[2])[:MAX_MEMBERS])
    return found, len(found)


DRIFT_CEILING = 6.0  # drift_cut stays below this many times the floor (the worst position's closest candidate)


def drift_cut(found: list[list[tuple[int, int, float]]], min_gap: float = 2.0
              ) -> tuple[list[list[tuple[int, int, float]]], float | None, float]:
    """FedAvg (E > 1 local steps): tighten membership to the widest gap in the candidates' distances.

    The update sums gradients taken at drifting weights, so the inputs of step k > 1 sit slightly off the inputs
    the server computes at the global weights. Their directions still enter the span, as near-duplicates of the
    step-1 inputs (the [CLS] row of every step, shared words), which leaves small singular values above the cut
    and a Wedin bound (``Span.tol``) so loose that almost every token passes at every position. True members stay
    near the drift level (measured on minilm-l6, E = 2, B = 2, SST-2: at most 2.6e-3), far below the bulk of wrong
    (token, position) pairs (from 1e-2), so the widest gap in the sorted distances separates them. The cut never
    drops a position's closest candidate (the floor: the largest of those, itself a true token's distance, so the
    error's own scale). It looks for a gap of at least ``min_gap`` (a ratio) only up to :data:`DRIFT_CEILING` x the
    floor, and cuts there without one: the widest gap overall lay between the [CLS] position's candidates (1e-1 to
    4e-1) and kept 85-95 tokens per position, while every true token of 8 SST-2 updates on minilm-l6 (E = 2, B = 2)
    stayed within 3.3 x the floor. Returns (the kept candidates, the cut: None only without candidates, the gap's
    ratio)."""
    rows = [row for row in found if row]
    if not rows:
        return found, None, 1.0
    floor = max(row[0][2] for row in rows)  # rows are sorted by distance: each position keeps its closest
    ceiling = DRIFT_CEILING * floor
    dists = sorted({c[2] for row in rows for c in row if floor <= c[2] <= ceiling})
    best, cut = 1.0, None
    for low, high in zip(dists, dists[1:]):
        ratio = high / max(low, 1e-300)
        if ratio > best:
            best, cut = ratio, (low * high) ** 0.5
    if cut is None or best < min_gap:
        cut = ceiling
    return [[c for c in row if c[2] <= cut] for row in found], cut, best
