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
descent on their mean distance to that span (single-position changes; when those are stuck, exchanges of two
positions' tokens, then one-token changes of the bag with the tokens reassigned to positions), from random starts,
then from starts pinned to each (position, token).
A certified sequence is settled: its own embedding gradient (exact, the batch loss being a mean of per-sequence
losses) is subtracted from the word and position rows, so its tokens leave the pools and the peeling resumes;
a sequence in the span that explains no token's gradient waits (neighbouring sentences can share all their
words): it is tried again after each settle, and in pairs with the other waiting ones. When the linker stalls
with some sequences certified, their whole gradient is taken off and the rest searched alone (:mod:`adversary.peel`).

Thresholds come from the gradients and float32 precision: rank at the largest singular-value drop that lands at
rounding level (eps32 * ||G||_F, plus the error a search expects of a derived gradient,
:meth:`~adversary.case.Observation.search_error_of`); membership below the subspace perturbation bound
s[r]/s[r-1]; orthogonality below a few ulps (|cos| <= 4 * eps32); a residual is zero below sqrt(eps32) of its
parts, and a sequence settled below sqrt(eps32) (the geometric mean of eps32 and 1; on a derived gradient, also
when isolated from its single-token changes); a B > 1 batch passes only
when its gradient matches the observed one (1 - cos < eps32). Noise makes the gradient full rank, so the check fails instead of returning
confident garbage.

Parts, each its own module: :mod:`~adversary.span.subspace` (spans and membership),
:mod:`~adversary.span.ledger` (the embedding-gradient ledger and its pools), :mod:`~adversary.span.linker`
(sequence assembly), :mod:`~adversary.span.attack` (the registered attack, its options and budget).
"""

from adversary.span.attack import SpanOptions, span_attack
from adversary.span.subspace import Span, gradient_span

__all__ = ["SpanOptions", "Span", "gradient_span", "span_attack"]

