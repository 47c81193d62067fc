"""The candidate ledger of `span` (B > 1): the embedding gradients not yet explained, and the per-position
candidate pools they leave.

With random init (LayerNorm bias 0) a layer input is linear in word + position, so any pair joined through shared
tokens and positions is also in the first layer's span: the per-position members are a superset. The embedding
gradients cut it down exactly: LayerNorm's backward is orthogonal to its normalised input, so the word-gradient
row of a token found at one position only is orthogonal to that input and to no other; the position-gradient rows
(sums over the tokens at each position) then peel off the repeated tokens. Orthogonality is read below a few ulps
(|cos| <= 4 * eps32); a residual is zero below sqrt(eps32) of its parts.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import torch

from adversary.case import Observation
from adversary.span.subspace import Candidate, LayerInputs, param_name
from adversary.token_set import word_embedding_name
from fedsim.core.train import EPS32


class Ledger:
    """The embedding gradients not yet explained, per token (word rows) and per position (position rows).

    ``pools`` peels them (module doc) into per-position candidates; tokens and positions already explained to
    float32 precision drop out. ``settle`` subtracts a certified sequence's own embedding gradient (exact, since
    the batch loss is a mean of per-sequence losses): that removes its tokens and breaks the cycles (two repeated
    tokens sharing two positions) that stop the peeling, so each found sequence shrinks the next search."""

    def __init__(self, obs: Observation, inputs: LayerInputs, members: list[list[tuple[int, int, float]]]) -> None:
        self.obs, self.inputs = obs, inputs
        self.superset = [[(t, s) for t, s, _ in row] for row in members]
        # Each candidate's distance to the first layer's span at its position (members' own).
        self.distance = {(p, (t, s)): d for p, row in enumerate(members) for t, s, d in row}
        self._cache: dict[tuple[Candidate, ...], tuple[int, torch.Tensor]] = {}
        gw_name = word_embedding_name(obs.model)
        gp_name = param_name(obs.model, inputs.module.position_embeddings.weight)
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
        # A FedAvg update sums word rows taken at drifting weights, so the orthogonality test is only near-exact
        # there and can hand a position's tokens elsewhere: such a position falls back to its members, unresolved.
        emptied = [p for p in range(n) if not out[p] and self.superset[p]]
        for p in emptied:
            out[p], open_[p] = list(self.superset[p]), True
        return out, [not o for o in open_]

    def _grads(self, seq: list[Candidate]) -> tuple[int, torch.Tensor]:
        """The sequence's predicted label and its own embedding gradient for every label (K x L x d, float64),
        kept: a sequence's own gradient does not change as the ledger does, so re-explaining it is arithmetic."""
        key = tuple(seq)
        if key not in self._cache:
            model, bsz = self.obs.model, self.obs.batch_size
            ids = torch.tensor([[t for t, _ in seq]])
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, token_type_ids=torch.tensor([[s for _, s in seq]]),
                           attention_mask=torch.ones_like(ids)).logits
            rows = [torch.autograd.grad(torch.nn.functional.cross_entropy(logits, torch.tensor([y])) / bsz, embeds,
                                        retain_graph=True)[0][0].double() for y in range(logits.shape[-1])]
            self._cache[key] = (int(logits.argmax()), torch.stack(rows))
        return self._cache[key]

    def explain(self, seq: list[Candidate]) -> tuple[int, torch.Tensor, int]:
        """The sequence's own embedding gradient for the label that explains the ledger best: (label, rows, how
        many of its tokens it explains completely). A wrong sequence explains none; so does a true one whose every
        token is also in another unsettled sequence (see :meth:`explain_group`)."""
        labels, rows, explained = self.explain_group([seq])
        return labels[0], rows[0], explained

    def explain_group(self, seqs: list[list[Candidate]]) -> tuple[list[int], list[torch.Tensor], int]:
        """Several sequences' own embedding gradients, for the labels that explain the ledger best together:
        (labels, rows, how many of their token occurrences they explain completely). Two true sequences that
        share all their tokens explain nothing one at a time, only together; wrong ones do not add up to the
        word rows, alone or together."""
        grads = [self._grads(q) for q in seqs]
        if not self.usable:
            return [g[0] for g in grads], [g[1][g[0]] for g in grads], 1
        best: tuple[int, float, tuple[int, ...]] | None = None
        for ys in itertools.product(*(range(g[1].shape[0]) for g in grads)):
            rest = {t: self.word[t].clone() for q in seqs for t, _ in q}
            for q, g, y in zip(seqs, grads, ys):
                for p, (t, _) in enumerate(q):
                    rest[t] -= g[1][y, p]
            explained = sum(float(rest[t].norm()) <= self.zero * max(self.word0[t], float(g[1][y, p].norm()))
                            for q, g, y in zip(seqs, grads, ys) for p, (t, _) in enumerate(q))
            miss = sum(float(r.norm()) / max(self.word0[t], 1e-300) for t, r in rest.items())
            if best is None or (-explained, miss) < (-best[0], best[1]):
                best = (explained, miss, ys)
        return list(best[2]), [g[1][y] for g, y in zip(grads, best[2])], best[0]

    def settle(self, seq: list[Candidate], rows: torch.Tensor) -> None:
        """Take a certified sequence's own embedding-gradient ``rows`` (from :meth:`explain`) off the ledger."""
        if self.usable:
            for p, (t, _) in enumerate(seq):
                part = float(rows[p].norm())
                self.word0[t], self.pos0[p] = max(self.word0[t], part), max(self.pos0[p], part)
                self.word[t] -= rows[p]
                self.pos[p] -= rows[p]
