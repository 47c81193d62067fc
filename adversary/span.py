"""`span`: exact recovery from the low rank of the attention weight gradients (DAGER, Petrov et al. 2024), for BERT.

The first layer's Q/K/V weight gradient is sum_i delta_i x_i^T over real positions, so its row space is spanned by
the layer's inputs x_i = LayerNorm(word[t] + pos[p] + type[s]); padding adds nothing. A candidate (t, p, s) is in
the batch when its x lies in that span (distance read in float64). B = 1: one member per position, in order.

B > 1 needs two more facts. (1) With random init (LayerNorm bias 0) x is linear in word + position, so any pair
joined through shared tokens and positions is also in the span: the per-position candidates are a superset. The
embedding gradients cut it down exactly: LayerNorm's backward is orthogonal to its normalised input, so the
word-gradient row of a token found at one position only is orthogonal to that input and to no other; the
position-gradient rows (sums over the tokens at each position) then peel off the repeated tokens. (2) Which
tokens form one sequence: the first FFN's input-weight gradient spans each position's attention output, a function
of its whole sequence; sequences of each length (positions whose pool holds [SEP]) are assembled by coordinate
descent on their mean distance to that span (single-position changes, then exchanges of two positions' tokens
when those are stuck), from random starts, then from starts pinned to each (position, token).
A certified sequence is settled: its own embedding gradient (exact, the batch loss being a mean of per-sequence
losses) is subtracted from the word and position rows, so its tokens leave the pools and the peeling resumes;
a sequence in the span that explains no token's gradient is rejected.

Thresholds come from the gradients and float32 precision: rank at the largest singular-value drop that lands at
rounding level (eps32 * ||G||_F); membership below the subspace perturbation bound s[r]/s[r-1]; orthogonality
below a few ulps (|cos| <= 4 * eps32); a residual is zero below sqrt(eps32) of its parts, and a sequence certified
below sqrt(eps32) (the geometric mean of eps32 and 1); a B > 1 batch passes only when its gradient matches the
observed one (1 - cos < eps32). Noise makes the gradient full rank, so the check fails instead of returning
confident garbage.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from adversary.case import Observation, Reconstruction
from adversary.labels import classifier_bias_name, recover_labels
from adversary.registry import register
from adversary.token_set import token_set, word_embedding_name
from fedsim.core.train import EPS32, batch_gradients

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
    threshold: the subspace perturbation bound s[k]/s[k-1] (Wedin), which members stay under."""
    m = torch.cat([g.detach().double().reshape(g.shape[0], -1) for g in grads])
    r_factor = torch.linalg.qr(m, mode="r")[1] if m.shape[0] > m.shape[1] else m  # same singular values, cheaper
    _, s, vh = torch.linalg.svd(r_factor, full_matrices=False)
    n = s.numel()
    floor = EPS32 * float(torch.linalg.norm(m)) + error
    rel = s / s[0].clamp_min(1e-300)
    if rank is None:
        ratios = s[:-1] / s[1:].clamp_min(1e-300)
        ratios[s[1:] > floor] = 0.0
        k = int(torch.argmax(ratios)) + 1 if bool((ratios > 0).any()) else n
    else:
        k = min(rank, n)
    passed = rank is None and k <= n - 2 and float(s[k]) <= floor
    bound = float(s[k] / s[k - 1]) if k < n else 1.0
    return Span(basis=vh[:k].T.contiguous(), singular=rel, rank=k, passed=passed, tol=bound, vh=vh)


def _linker_span(grad: torch.Tensor, max_tokens: int, error: float = 0.0) -> Span:
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


def _param_name(model: torch.nn.Module, param: torch.nn.Parameter) -> str:
    return next(n for n, p in model.named_parameters() if p is param)


def _attention_names(obs: Observation, layer: int) -> list[str]:
    attn = obs.model.base_model.encoder.layer[layer].attention.self
    return [_param_name(obs.model, m.weight) for m in (attn.query, attn.key, attn.value)]


def _attention_grads(obs: Observation, layer: int) -> list[torch.Tensor] | None:
    names = _attention_names(obs, layer)
    return [obs.gradients[n] for n in names] if all(n in obs.gradients for n in names) else None


def _relative_error(obs: Observation) -> float:
    """||E|| / ||G|| over the whole gradient: 1 - cos(G + E, G) is at most about half its square."""
    if not obs.gradient_error:
        return 0.0
    norm = math.sqrt(sum(float(g.double().square().sum()) for g in obs.gradients.values()))
    return obs.error_of(list(obs.gradients)) / max(norm, 1e-300)


def _nonzero_rows(obs: Observation, param: torch.nn.Parameter) -> list[int] | None:
    grad = obs.gradients.get(_param_name(obs.model, param))
    return None if grad is None else torch.nonzero(grad.detach().norm(dim=1) > 0).squeeze(1).tolist()


def _members(obs: Observation, span: Span, inputs: LayerInputs, vocab: torch.Tensor
             ) -> tuple[list[list[tuple[int, int, float]]], int]:
    """Per position, the (token, segment, distance) candidates inside the span. Positions come from the non-zero
    position-gradient rows (padding leaves them zero), else until a position has no member."""
    emb = inputs.module
    pos_rows = _nonzero_rows(obs, emb.position_embeddings.weight)
    types = _nonzero_rows(obs, emb.token_type_embeddings.weight) or list(range(inputs.type.shape[0]))
    limit = (max(pos_rows) + 1) if pos_rows else inputs.pos.shape[0]
    found: list[list[tuple[int, int, float]]] = []
    if pos_rows and vocab.numel() * limit * len(types) <= 500_000:  # all positions in one batch
        dist = torch.stack([span.distance(inputs.x(vocab[:, None], torch.arange(limit), s)) for s in types])
        for p in range(limit):
            hits = torch.nonzero(dist[:, :, p] < span.tol).tolist()
            found.append(sorted(((int(vocab[i]), types[j], float(dist[j, i, p])) for j, i in hits),
                                key=lambda c: c[2]))
        return found, limit
    for p in range(limit):
        row = []
        for s in types:
            dist = span.distance(inputs.x(vocab, p, s))
            for i in torch.nonzero(dist < span.tol).squeeze(1).tolist():
                row.append((int(vocab[i]), s, float(dist[i])))
        if not row and not pos_rows:
            break
        found.append(sorted(row, key=lambda c: c[2]))
    return found, len(found)


class Ledger:
    """The embedding gradients not yet explained, per token (word rows) and per position (position rows).

    ``pools`` peels them (module doc) into per-position candidates; tokens and positions already explained to
    float32 precision drop out. ``settle`` subtracts a certified sequence's own embedding gradient (exact, since
    the batch loss is a mean of per-sequence losses): that removes its tokens and breaks the cycles (two repeated
    tokens sharing two positions) that stop the peeling, so each found sequence shrinks the next search."""

    def __init__(self, obs: Observation, inputs: LayerInputs, members: list[list[tuple[int, int, float]]]) -> None:
        self.obs, self.inputs = obs, inputs
        self.superset = [[(t, s) for t, s, _ in row] for row in members]
        gw_name = word_embedding_name(obs.model)
        gp_name = _param_name(obs.model, inputs.module.position_embeddings.weight)
        self.usable = gw_name in obs.gradients and gp_name in obs.gradients
        if not self.usable:
            return
        gw, gp = obs.gradients[gw_name].double(), obs.gradients[gp_name].double()
        tokens = sorted({t for row in self.superset for t, _ in row})
        self.word = {t: gw[t].clone() for t in tokens}
        self.word0 = {t: float(gw[t].norm()) for t in tokens}  # scales: the largest part seen, for "is it zero"
        self.pos = gp[: len(members)].clone()
        self.pos0 = [float(v) for v in self.pos.norm(dim=1)]
        keys = [(t, p, s) for p, row in enumerate(self.superset) for t, s in row]
        units = [inputs.direction(torch.tensor([t]), p, s)[0] for t, p, s in keys] if len(keys) < 2 else \
            inputs.direction(torch.tensor([k[0] for k in keys]), torch.tensor([k[1] for k in keys]),
                             torch.tensor([k[2] for k in keys]))
        self.directions = dict(zip(keys, units))
        self.ortho = 4 * EPS32  # |cos| of a LayerNorm backward against its own input: a few float32 ulps
        self.zero = math.sqrt(EPS32)  # a residual this small (relative) is rounding, not a token's gradient

    def _orthogonal(self, vec: torch.Tensor, t: int, p: int, s: int) -> bool:
        u = self.directions[(t, p, s)]
        return abs(float(vec @ u)) <= self.ortho * float(vec.norm())

    def pools(self) -> tuple[list[list[Candidate]], list[bool]]:
        """Candidates per position and whether each position's token set is exact."""
        if not self.usable:
            return [list(p) for p in self.superset], [False] * len(self.superset)
        n = len(self.superset)
        residual = self.pos.clone()
        scale = list(self.pos0)
        open_ = [float(residual[p].norm()) > self.zero * scale[p] for p in range(n)]
        remaining = {t: w.clone() for t, w in self.word.items() if float(w.norm()) > self.zero * self.word0[t]}
        where: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for p in range(n):
            for t, s in self.superset[p]:
                if open_[p] and t in remaining:
                    where[t].append((p, s))
        assigned: list[set[Candidate]] = [set() for _ in range(n)]
        progress = True
        while progress and remaining:
            progress = False
            for t in list(remaining):  # a token whose rest sits at one position (possibly in several sequences)
                hits = [(p, s) for p, s in where[t] if open_[p] and self._orthogonal(remaining[t], t, p, s)]
                if len(hits) == 1:
                    p, s = hits[0]
                    assigned[p].add((t, s))
                    scale[p] = max(scale[p], float(remaining[t].norm()))
                    residual[p] -= remaining.pop(t)
                    open_[p] = float(residual[p].norm()) > self.zero * scale[p]
                    progress = True
            for p in [q for q in range(n) if open_[q]]:  # a position with a single unexplained token left
                hits = [(t, s) for t, s in self.superset[p] if t in remaining
                        and self._orthogonal(residual[p], t, p, s)]
                if len(hits) == 1:
                    t, s = hits[0]
                    assigned[p].add((t, s))
                    remaining[t] -= residual[p]
                    residual[p].zero_()
                    open_[p], progress = False, True
                    if float(remaining[t].norm()) <= self.zero * self.word0[t]:
                        del remaining[t]
        out = [sorted(assigned[p] | ({(t, s) for t, s in self.superset[p] if t in remaining} if open_[p] else set()))
               for p in range(n)]
        return out, [not o for o in open_]

    def explain(self, seq: list[Candidate]) -> tuple[int, torch.Tensor, int]:
        """The sequence's own embedding gradient for the label that explains the ledger best: (label, rows, how
        many of its tokens it explains completely). A wrong sequence explains none."""
        model, bsz = self.obs.model, self.obs.batch_size
        ids = torch.tensor([[t for t, _ in seq]])
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, token_type_ids=torch.tensor([[s for _, s in seq]]),
                       attention_mask=torch.ones_like(ids)).logits
        best: tuple[int, float, int, torch.Tensor] | None = None
        for y in range(logits.shape[-1]):
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([y])) / bsz
            e = torch.autograd.grad(loss, embeds, retain_graph=True)[0][0].double()
            if not self.usable:
                return int(logits.argmax()), e, 1
            rest = {t: self.word[t].clone() for t, _ in seq}
            for p, (t, _) in enumerate(seq):
                rest[t] -= e[p]
            explained = sum(float(r.norm()) <= self.zero * max(self.word0[t], float(e[p].norm()))
                            for p, (t, r) in enumerate((t, rest[t]) for t, _ in seq))
            miss = sum(float(r.norm()) / max(self.word0[t], 1e-300) for t, r in rest.items())
            if best is None or (-explained, miss) < (-best[2], best[1]):
                best = (y, miss, explained, e)
        return best[0], best[3], best[2]

    def settle(self, seq: list[Candidate], rows: torch.Tensor) -> None:
        if self.usable:
            for p, (t, _) in enumerate(seq):
                part = float(rows[p].norm())
                self.word0[t], self.pos0[p] = max(self.word0[t], part), max(self.pos0[p], part)
                self.word[t] -= rows[p]
                self.pos[p] -= rows[p]


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
        self.index = {(p, c): i for i, (p, c) in enumerate((p, c) for p, pool in enumerate(pools) for c in pool)}
        keys = list(self.index)
        with torch.no_grad():
            x = base.embeddings(input_ids=torch.tensor([[c[0] for _, c in keys]]),
                                token_type_ids=torch.tensor([[c[1] for _, c in keys]]),
                                position_ids=torch.tensor([[p for p, _ in keys]]))[0]
            sa = self.attn.self
            self.feats = [x, sa.query(x), sa.key(x), sa.value(x)]

    @torch.no_grad()
    def score(self, seqs: list[list[Candidate]]) -> torch.Tensor:
        self.calls += len(seqs)
        idx = torch.tensor([[self.index[(p, c)] for p, c in enumerate(q)] for q in seqs])
        x, q, k, v = (f[idx] for f in self.feats)
        sa, so = self.attn.self, self.attn.output
        n, length, _ = x.shape
        q, k, v = (t.view(n, length, sa.num_attention_heads, sa.attention_head_size).transpose(1, 2) for t in (q, k, v))
        ctx = torch.softmax(q @ k.transpose(-1, -2) * sa.attention_head_size ** -0.5, dim=-1) @ v
        y = so.LayerNorm(so.dense(ctx.transpose(1, 2).reshape(n, length, -1)) + x)
        y = y / y.norm(dim=-1, keepdim=True)
        return (y - (y @ self.basis) @ self.basis.T).norm(dim=-1).mean(dim=1).double()

    def descend(self, seq: list[Candidate], pools: list[list[Candidate]], sweeps: int = 12, stop: float = 0.0
                ) -> tuple[tuple[Candidate, ...], float]:
        """Descent over single-position changes, all scored in one batch per step: take every improving change
        at once when that is better than the best single one (errors add up nearly independently), else that one."""
        best = float(self.score([seq])[0])
        for _ in range(sweeps):
            if best < stop:
                break
            moves = [(p, c) for p, pool in enumerate(pools) if len(pool) > 1 for c in pool if c != seq[p]]
            if not moves:
                break
            trial = [seq[:p] + [c] + seq[p + 1:] for p, c in moves]
            d = self.score(trial)
            per_pos: dict[int, tuple[float, Candidate]] = {}
            for (p, c), v in zip(moves, d.tolist()):
                if v < best and v < per_pos.get(p, (float("inf"), c))[0]:
                    per_pos[p] = (v, c)
            if not per_pos:  # a local minimum of single changes: try exchanging two positions' tokens
                swapped = self._best_swap(seq, pools, best)
                if swapped is None:
                    break
                seq, best = swapped
                continue
            j = int(torch.argmin(d))
            seq_one, d_one = trial[j], float(d[j])
            if len(per_pos) > 1:
                combined = [per_pos[p][1] if p in per_pos else c for p, c in enumerate(seq)]
                d_all = float(self.score([combined])[0])
                if d_all < d_one:
                    seq_one, d_one = combined, d_all
            seq, best = seq_one, d_one
        return tuple(seq), best


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


def _assemble(obs: Observation, ledger: Ledger, linker: Linker, sep: int, seed: int, restarts: int,
              budget: int) -> tuple[list[list[Candidate]], list[float], list[int], int, int]:
    """Certified sequences one at a time: for each length (a position whose pool holds [SEP]; or the public
    lengths), descents from random starts, then from starts pinned to each (position, token) of the current pools
    (exact positions first); the first sequence under sqrt(eps32) (the geometric mean of float32 precision and 1)
    is settled in the ledger and the pools recomputed. Unfilled slots get the best uncertified minima."""
    rng = np.random.default_rng(seed)
    cert = math.sqrt(EPS32)
    left = {n: obs.seq_lengths.count(n) for n in set(obs.seq_lengths)} if obs.seq_lengths is not None else None
    found: list[tuple[Candidate, ...]] = []
    labels: list[int] = []
    minima: dict[tuple[Candidate, ...], float] = {}
    rejected: set[tuple[Candidate, ...]] = set()
    descents = 0

    def attempts(pools: list[list[Candidate]], resolved: list[bool], ends: list[int]):
        for _ in range(restarts):
            for e in ends:
                yield e, {}
        todo = sorted((not resolved[p], -p, p, c) for p, pool in enumerate(pools) for c in pool if p > 0)
        for *_, p, c in todo:
            for e in ends:
                if p < e or (p == e and c[0] == sep):
                    yield e, {p: c}

    while len(found) < obs.batch_size and descents < budget:
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
        new = None
        for e, pinned in attempts(pools, resolved, list(subs)):
            if descents >= budget:
                break
            descents += 1
            sub = [[pinned[p]] if p in pinned else pool for p, pool in enumerate(subs[e])]
            start = [pool[int(rng.integers(len(pool)))] for pool in sub]
            seq, d = linker.descend(start, sub, stop=cert)
            minima[seq] = min(d, minima.get(seq, float("inf")))
            if d < cert and seq not in found and seq not in rejected:
                label, rows, explained = ledger.explain(list(seq))
                if explained:
                    new = seq
                    break
                rejected.add(seq)  # in the span but explains no token's gradient: not a batch sequence
        if new is None:
            break
        found.append(new)
        labels.append(label)
        ledger.settle(list(new), rows)
        if left is not None:
            left[len(new)] -= 1
    n_cert = len(found)
    rest = sorted((q for q in minima if q not in found and q not in rejected), key=minima.get)
    rest = rest[: obs.batch_size - n_cert]
    chosen = found + rest
    return [list(q) for q in chosen], [minima[q] for q in chosen], labels, n_cert, descents


def _labels(obs: Observation, batch: dict[str, torch.Tensor]) -> list[int]:
    """Each sequence's label from the classifier gradient, given the recovered inputs.

    grad W = (1/B) sum_s (p_s - onehot(y_s)) z_s^T with z_s the classifier's input, which we can now compute: a
    least-squares solve gives each sequence's (p_s - onehot(y_s)), hence y_s. B = 1: the bias gradient's only
    negative entry (iDLG).
    """
    bias = classifier_bias_name(obs.gradients, obs.num_labels)
    if bias is None or obs.num_labels < 2:
        return [0] * obs.batch_size
    if obs.batch_size == 1:
        return [int(obs.gradients[bias].argmin())]
    head = obs.model.get_submodule(bias.rsplit(".", 1)[0])
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, a, out: captured.append(a[0].detach()))
    with torch.no_grad():
        logits = obs.model(**batch).logits.double()
    hook.remove()
    gw = obs.gradients[bias[: -len("bias")] + "weight"].double()
    coeff = torch.linalg.lstsq(captured[0].double().T, len(logits) * gw.T).solution  # B x K: p_s - onehot(y_s)
    return [int(i) for i in torch.argmax(logits.softmax(-1) - coeff, dim=1)]


def _batch(obs: Observation, seqs: list[list[Candidate]]) -> dict[str, torch.Tensor]:
    length = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), length), obs.tokenizer.pad_token_id, dtype=torch.long)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, q in enumerate(seqs):
        ids[i, : len(q)] = torch.tensor([t for t, _ in q])
        types[i, : len(q)] = torch.tensor([s for _, s in q])
        mask[i, : len(q)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def gradient_cosine_distance(obs: Observation, batch: dict[str, torch.Tensor]) -> float:
    """1 - cosine between the observed gradient and the one the candidate batch (with labels) produces."""
    grads = batch_gradients(obs.model, batch)
    names = [n for n in obs.gradients if n in grads]
    a, b = [grads[n] for n in names], [obs.gradients[n] for n in names]
    dot = sum(float((x * y).sum(dtype=torch.float64)) for x, y in zip(a, b))
    na = math.sqrt(sum(float(x.square().sum(dtype=torch.float64)) for x in a))
    nb = math.sqrt(sum(float(y.square().sum(dtype=torch.float64)) for y in b))
    return 1 - dot / max(na * nb, 1e-300)


@register("span")
def span_attack(observation: Observation, *, iterations: int = 0, seed: int = 0, restarts: int = 4,
                budget: int | None = None, gradient_distance: bool = False, **_: object) -> Reconstruction:
    """DAGER-style exact recovery (module doc). ``restarts``: random descents per sequence length when B > 1;
    ``budget``: most descents in all (default 64 x B; a certified sequence ends its search early, so the budget
    is only spent on a batch the linker cannot finish);
    ``gradient_distance``: also compute 1 - cosine to the observed gradient (one forward/backward, off by
    default for speed). ``iterations`` is ignored (no optimisation)."""
    start = time.perf_counter()
    obs, tok = observation, observation.tokenizer
    info: dict = {"method": "span", "special_ids": sorted(set(tok.all_special_ids)),
                  "analytic_labels": recover_labels(obs)}
    grads1 = _attention_grads(obs, 0)
    if grads1 is None:
        raise ValueError("span needs the first attention layer's query/key/value weight gradients")
    span1 = gradient_span(grads1, error=obs.error_of(_attention_names(obs, 0)))
    info.update(rank=span1.rank, span_tol=span1.tol, singular_drop=float(span1.singular[span1.rank] /
                span1.singular[span1.rank - 1]) if span1.rank < span1.singular.numel() else 1.0)
    empty = Reconstruction(texts=[""] * obs.batch_size, token_ids=[[] for _ in range(obs.batch_size)],
                           labels=list(info["analytic_labels"] or [0] * obs.batch_size), info=info)
    if not span1.passed:
        info.update(span_check_passed=False, reason="no drop of the first layer's gradient spectrum to float32 "
                    "rounding level (noised, or more tokens than the hidden size)")
        empty.seconds = time.perf_counter() - start
        return empty
    inputs = LayerInputs(obs.model)
    vocab = token_set(obs)
    info["token_set_size"] = int(vocab.numel())
    members, length = _members(obs, span1, inputs, vocab)
    info["max_length"] = length
    if obs.batch_size == 1:
        seqs = [[(row[0][0], row[0][1]) for row in members if row]]
        info["ambiguous_positions"] = sum(len(row) > 1 for row in members)
        ok = all(members) and length > 0
    else:
        ledger = Ledger(obs, inputs, members)
        pools, resolved = ledger.pools()
        info["resolved_positions"] = sum(resolved)
        info["pool_sizes"] = [len(p) for p in pools]
        ffn_in = _param_name(obs.model, obs.model.base_model.encoder.layer[0].intermediate.dense.weight)
        if ffn_in not in obs.gradients or not all(pools):
            info.update(span_check_passed=False, reason="no first-FFN gradient, or a position without candidates")
            empty.seconds = time.perf_counter() - start
            return empty
        span2 = _linker_span(obs.gradients[ffn_in], obs.batch_size * len(pools), obs.error_of([ffn_in]))
        linker = Linker(obs, span2, ledger.superset)
        seqs, dists, settled, n_cert, descents = _assemble(obs, ledger, linker, tok.sep_token_id, seed, restarts,
                                                           budget if budget is not None else 64 * obs.batch_size)
        info.update(rank2=span2.rank, sequence_distances=dists, certified_sequences=n_cert, descents=descents,
                    linker_calls=linker.calls)
        ok = n_cert == obs.batch_size
    token_ids = [[t for t, _ in q] for q in seqs]
    batch = _batch(obs, seqs) if seqs and all(seqs) else None
    labels = _labels(obs, batch) if batch is not None else list(empty.labels)
    if obs.batch_size > 1 and batch is not None:
        labels[: len(settled)] = settled  # certified sequences: the label whose gradient the ledger matched
    gdist = float("nan")
    if (gradient_distance or obs.batch_size > 1) and batch is not None:
        gdist = gradient_cosine_distance(obs, {**batch, "labels": torch.tensor(labels)})
    if obs.batch_size > 1:  # the assembled batch must reproduce the observed gradient to its precision
        ok = ok and gdist < EPS32 + _relative_error(obs) ** 2
    info["span_check_passed"] = bool(ok)
    texts = [tok.decode(q, skip_special_tokens=True, clean_up_tokenization_spaces=True).strip() for q in token_ids]
    return Reconstruction(texts=texts, token_ids=token_ids, labels=labels, iterations=0,
                          seconds=time.perf_counter() - start, gradient_distance=gdist, info=info)
