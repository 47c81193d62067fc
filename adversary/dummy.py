"""The dummy batch: which positions are public facts, how the free ones start, how they become tokens again.

The attack optimises continuous word embeddings (the input of BERT's embedding layer, before position and segment
embeddings are added). [CLS] at the start, [SEP] at each segment's end, [PAD] after the end and the segment ids are
fixed by the tokenizer's format once the lengths are known, so only the content positions are free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from fedsim.core.errors import UsageError, parse_float, parse_spec

INIT_ACCEPTED = ("normal (std of the word embeddings), normal:STD, uniform:RANGE, constant:VALUE, "
                 "tokens:IDS (a warm start, see warm_spec)")
WARM = "tokens"


@dataclass
class Layout:
    """Fixed and free positions of a dummy batch of ``B`` sequences padded to ``L`` tokens."""

    fixed_ids: torch.Tensor  # (B, L) token ids at fixed positions, [PAD] elsewhere
    free: torch.Tensor  # (B, L) bool, True where the attack optimises the embedding
    attention_mask: torch.Tensor  # (B, L)
    token_type_ids: torch.Tensor  # (B, L)
    lengths: list[int]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.fixed_ids.shape)  # type: ignore[return-value]

    def compose(self, dummy: torch.Tensor, fixed_embeds: torch.Tensor) -> torch.Tensor:
        """Model input: dummy embeddings at free positions, the true special-token embeddings elsewhere."""
        return torch.where(self.free.unsqueeze(-1), dummy, fixed_embeds)

    def token_ids(self, free_ids: torch.Tensor) -> list[list[int]]:
        """Full id sequences (special tokens included, padding cut) from ids decoded at every position."""
        ids = torch.where(self.free, free_ids, self.fixed_ids)
        return [ids[b, :n].tolist() for b, n in enumerate(self.lengths)]


def build_layout(tokenizer: PreTrainedTokenizerBase, lengths: Sequence[int],
                 segments: Sequence[Sequence[int]] | None = None) -> Layout:
    """The BERT input format for sequences of the given lengths (special tokens included).

    ``segments`` (token type ids per sequence) places the middle [SEP] of sentence pairs; without it every sequence
    is a single sentence: [CLS] x ... x [SEP].
    """
    if not lengths or min(lengths) < 2:
        raise UsageError(f"every sequence needs at least 2 tokens ([CLS] and [SEP]), got lengths {list(lengths)}")
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if None in (cls_id, sep_id, pad_id):
        raise UsageError("the tokenizer has no [CLS]/[SEP]/[PAD] tokens; the attack needs a BERT-style format")
    bsz, width = len(lengths), max(lengths)
    fixed = torch.full((bsz, width), pad_id, dtype=torch.long)
    free = torch.zeros((bsz, width), dtype=torch.bool)
    mask = torch.zeros((bsz, width), dtype=torch.long)
    types = torch.zeros((bsz, width), dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        free[b, 1:n - 1] = True
        fixed[b, 0], fixed[b, n - 1] = cls_id, sep_id
        if segments is not None:
            seg = torch.as_tensor(list(segments[b])[:n], dtype=torch.long)
            types[b, :len(seg)] = seg
            switch = (seg[1:] != seg[:-1]).nonzero().flatten()
            for pos in switch.tolist():  # last token of each segment but the final one is a [SEP]
                fixed[b, pos], free[b, pos] = sep_id, False
    return Layout(fixed, free, mask, types, list(lengths))


def allowed_tokens(tokenizer: PreTrainedTokenizerBase, embedding: torch.Tensor) -> torch.Tensor:
    """Tokens a content position can hold: not special, not [unusedN], and with a non-zero embedding.

    A zero row (BERT's [PAD] under random init) has no direction; dividing by its norm gives NaN everywhere.
    """
    vocab = embedding.shape[0]
    allowed = embedding.detach().norm(dim=1) > 0
    special = [i for i in tokenizer.all_special_ids if i is not None and i < vocab]
    allowed[special] = False
    for token, idx in tokenizer.get_vocab().items():
        if idx < vocab and token.startswith("[unused"):
            allowed[idx] = False
    if not allowed.any():
        raise UsageError("no usable token embeddings: every candidate row of the word-embedding matrix is zero")
    return allowed


class Decoder:
    """Continuous embeddings -> token ids by the nearest word embedding (cosine, or Euclidean with ``l2``)."""

    def __init__(self, embedding: torch.Tensor, allowed: torch.Tensor, metric: str = "cos") -> None:
        if metric not in ("cos", "l2"):
            raise ValueError(f"unknown decoding metric {metric!r}; accepted: cos, l2")
        weight = embedding.detach()
        self.metric = metric
        if metric == "cos":
            self.matrix = weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.offset = torch.zeros(weight.shape[0], dtype=weight.dtype)
        else:  # argmin |x - w|^2 = argmax (2 x.w - |w|^2)
            self.matrix = 2 * weight
            self.offset = -weight.square().sum(1)
        self.offset = self.offset.masked_fill(~allowed, float("-inf"))

    @torch.no_grad()
    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        flat = embeds.detach().reshape(-1, embeds.shape[-1])
        scores = flat @ self.matrix.T + self.offset
        return scores.argmax(-1).reshape(embeds.shape[:-1])


def parse_dummy_init(spec: str) -> tuple[str, float | None]:
    """``normal`` (scale taken from the word embeddings), ``normal:STD``, ``uniform:R``, ``constant:V``, or
    ``tokens:IDS`` (checked by :func:`parse_warm`; its random part is plain ``normal``)."""
    kind, value = parse_spec(spec, "dummy init", INIT_ACCEPTED)
    if kind == WARM:
        parse_warm(spec)
        return kind, None
    if kind == "normal" and value is None:
        return kind, None
    if kind in ("normal", "uniform", "constant") and value is not None:
        number = parse_float(value, "dummy init", spec, INIT_ACCEPTED)
        if kind != "constant" and not number > 0:
            raise UsageError(f"bad dummy init {spec!r}: the scale must be positive; accepted: {INIT_ACCEPTED}")
        return kind, number
    raise UsageError(f"unknown dummy init {spec!r}; accepted: {INIT_ACCEPTED}")


def init_dummy(spec: str, shape: tuple[int, ...], embedding: torch.Tensor, allowed: torch.Tensor,
               generator: torch.Generator, start_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Starting point of the dummy embeddings. Plain ``normal`` matches the scale of real token embeddings,
    which NOTES found to matter more than anything else for TAG. ``start_ids`` (B, L), from :func:`apply_warm`:
    where >= 0, the dummy starts at that token's embedding instead (the random draw is made all the same, so a
    seed gives the same random part with or without a warm start)."""
    kind, value = parse_dummy_init(spec)
    dtype = embedding.dtype
    if kind == "constant":
        dummy = torch.full(shape, float(value), dtype=dtype)
    elif kind == "uniform":
        dummy = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * value
    else:
        std = value if value is not None else float(embedding.detach()[allowed].std())
        dummy = torch.randn(shape, generator=generator, dtype=dtype) * std
    if start_ids is not None:
        known = start_ids >= 0
        dummy[known] = embedding.detach()[start_ids[known]].to(dtype)
    return dummy


# --- warm start: begin where another attack (span) got to --------------------------------------------------------
@dataclass(frozen=True)
class WarmStart:
    """Token ids to start from, per sequence (special tokens included; None where unknown), and which sequences
    are ``pinned``: taken as known facts (fixed positions), so the optimisation only works on the others."""

    sequences: tuple[tuple[int | None, ...], ...]
    pinned: tuple[bool, ...]


def warm_spec(token_ids: Sequence[Sequence[int | None]], pinned: int = 0) -> str:
    """The ``tokens:`` init spec for a start at ``token_ids`` with its first ``pinned`` sequences fixed. It is a
    string so that every engine attack's existing ``init`` option carries it: ``tokens:=101,7,102/101,?,102``
    (sequences split by ``/``, ``=`` marks a pinned one, ``?`` an unknown position)."""
    parts = [("=" if k < pinned else "") + ",".join("?" if t is None else str(int(t)) for t in seq)
             for k, seq in enumerate(token_ids)]
    return f"{WARM}:" + "/".join(parts)


def parse_warm(spec: str) -> WarmStart:
    """The :class:`WarmStart` a ``tokens:`` spec describes (:func:`warm_spec`); a malformed one is a usage error
    naming the bad item."""
    kind, value = parse_spec(spec, "dummy init", INIT_ACCEPTED)
    if kind != WARM or value is None:
        raise UsageError(f"not a warm-start init {spec[:60]!r}; accepted: tokens:IDS (adversary.dummy.warm_spec)")
    sequences, pinned = [], []
    for part in value.split("/"):
        pin = part.startswith("=")
        items = [t.strip() for t in part.removeprefix("=").split(",") if t.strip()]
        try:
            ids = tuple(None if t == "?" else int(t) for t in items)
        except ValueError:
            raise UsageError(f"bad warm-start sequence {part[:60]!r} in the dummy init: expected token ids separated "
                             f"by ',' ('?' for unknown); accepted: {INIT_ACCEPTED}") from None
        if any(t is not None and t < 0 for t in ids):
            raise UsageError(f"bad warm-start sequence {part[:60]!r}: token ids are >= 0; accepted: {INIT_ACCEPTED}")
        sequences.append(ids)
        pinned.append(pin)
    return WarmStart(tuple(sequences), tuple(pinned))


def apply_warm(warm: WarmStart, layout: Layout, allowed: torch.Tensor) -> tuple[Layout, torch.Tensor]:
    """The layout with the pinned sequences made fixed, and the (B, L) start ids of :func:`init_dummy` (-1: random).

    Each warm sequence goes to the first unused row of its own length (pinned ones first), else, unpinned, to the
    first unused row; a pinned sequence is fixed only where it fits its row exactly (same length, every id known,
    agreeing with the row's special tokens), else it is a start like the others. A start id outside ``allowed``
    (a special token) is left random: the answer could not decode to it."""
    bsz, width = layout.shape
    fixed, free = layout.fixed_ids.clone(), layout.free.clone()
    start = torch.full((bsz, width), -1, dtype=torch.long)
    vocab, used = allowed.numel(), set()
    order = sorted(range(len(warm.sequences)), key=lambda k: not warm.pinned[k])
    for k in order:
        seq = warm.sequences[k]
        rows = [r for r in range(bsz) if r not in used]
        if not rows or not seq or any(t is not None and t >= vocab for t in seq):
            continue
        same = [r for r in rows if layout.lengths[r] == len(seq)]
        row = (same or rows)[0]
        used.add(row)
        n = min(len(seq), layout.lengths[row])
        ids = torch.tensor([-1 if t is None else t for t in seq[:n]], dtype=torch.long)
        fits = bool(same) and None not in seq and bool((ids[~free[row, :n]] == fixed[row, :n][~free[row, :n]]).all())
        if warm.pinned[k] and fits:
            fixed[row, :n], free[row, :n] = ids, False
            continue
        usable = free[row, :n] & (ids >= 0) & allowed[ids.clamp_min(0)]
        start[row, :n] = torch.where(usable, ids, start[row, :n])
    return replace(layout, fixed_ids=fixed, free=free), start


def embedding_range(embedding: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension [min, max] over real token embeddings: TAG keeps the dummy inside it after each step."""
    rows = embedding.detach()[allowed]
    return rows.min(0).values, rows.max(0).values
