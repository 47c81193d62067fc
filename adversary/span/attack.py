"""The `span` attack's entry point: the subspace test, then for B > 1 the ledger and the linker, then the labels
and the final check, the same for every B: the batch must reproduce the observed gradient
(:func:`adversary.distance.reproduces`: 1 - cos below float32 rounding plus the published error, lengths equal to
the public ``seq_lengths`` when given). Only then is ``span_check_passed`` True and every sequence certified.
Public lengths also bound the positions searched (at B = 1 the answer is cut to that length).

Budget: ``budget.iterations`` bounds the linker's descents (B > 1; at most ``min(iterations, max_descents or
64 x B)``), and ``budget.seconds`` stops the membership test (between chunks of the token set) and the linker
(no descent starts, and a running one stops its sweeps, past the deadline); what it has then is answered,
uncertified. B = 1 runs no descent: the order is read from the positions. The reconstruction reports the descents
run as its ``iterations`` (0 for B = 1); the subspace test, the ledger and the labels are cheap and always run.

FedAvg (``local_steps`` E > 1): only the first step's B sequences lie in the span at the global weights; the
linker goes on :data:`PEEL_PATIENCE` descents past the B-th settled sequence (stopping at the first B in the span
lost a MiniLM update whose first two in-span sequences were not the first step's), :func:`peel_steps` takes the B
closest and recovers the other steps from the residual; the replay of all E steps is then the only certificate.

Peeling (one step, B > 1): once the linker has certified some sequences and gone :data:`PEEL_PATIENCE` descents
without another, :func:`peel_found` takes them off the gradient (:func:`adversary.peel.peel_sequences`) and runs
`span` on the rest alone, where a weak sentence's tokens no longer drown among mixtures of a strong one's.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import torch

from adversary.case import Observation, Reconstruction
from adversary.distance import candidate_batch, candidate_distance, reproduces
from adversary.labels import classifier_bias_name, recover_labels
from adversary.options import AttackOptions, Budget
from adversary.registry import register
from adversary.peel import peel_first_step, peel_sequences
from adversary.replay import certify_by_replay
from adversary.span.ledger import Ledger
from adversary.span.linker import Linker, assemble
from adversary.span.subspace import (MAX_MEMBERS, LayerInputs, Span, attention_grads, attention_names, drift_cut,
                                     gradient_span, linker_span, members, nonzero_rows, param_name)
from adversary.token_set import token_set, word_embedding_name

MEMBER_CHUNK = 1024  # tokens per membership test when there is a deadline: it is checked between chunks
PEEL_PATIENCE = 32  # linker descents in a row without a new sequence, after a first one, before peeling (B > 1)


@dataclass(frozen=True)
class SpanOptions(AttackOptions):
    """``restarts``: random descents per sequence length when B > 1; ``max_descents``: most descents in all
    (default 64 x B; a certified sequence ends its search early, so they are only spent on a batch the linker
    cannot finish), further bounded by ``budget.iterations``; ``gradient_distance``: kept for old option files,
    no effect: the final check computes 1 - cosine to the observed gradient for every B."""

    restarts: int = 4
    max_descents: int | None = None
    gradient_distance: bool = False


def batch_labels(obs: Observation, batch: dict[str, torch.Tensor]) -> list[int]:
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


def members_until(obs: Observation, span1: Span, inputs: LayerInputs, vocab: torch.Tensor, public: int | None,
                  deadline: float) -> tuple[list[list[tuple[int, int, float]]], int, bool]:
    """:func:`members` over the token set in chunks of :data:`MEMBER_CHUNK`, none started past ``deadline``: what
    was found so far, the length, and whether the deadline cut it. Under noise the token set is the whole
    vocabulary and one call can take longer than any budget. One call, as before, without a deadline or when the
    length is read from where members stop (no public length and no position gradient)."""
    positions = public is not None or bool(nonzero_rows(obs, inputs.module.position_embeddings.weight))
    if math.isinf(deadline) or vocab.numel() <= MEMBER_CHUNK or not positions:
        return (*members(obs, span1, inputs, vocab, public), False)
    name = word_embedding_name(obs.model)
    if name in obs.gradients:  # likeliest tokens first (largest embedding-gradient rows), so a cut loses least
        vocab = vocab[torch.argsort(obs.gradients[name].detach().double().norm(dim=1)[vocab], descending=True)]
    merged: list[list[tuple[int, int, float]]] = []
    length, late = 0, False
    for begin in range(0, vocab.numel(), MEMBER_CHUNK):
        if time.perf_counter() > deadline:
            late = True
            break
        found, n = members(obs, span1, inputs, vocab[begin:begin + MEMBER_CHUNK], public)
        length = max(length, n)
        merged += [[] for _ in range(len(found) - len(merged))]
        for p, row in enumerate(found):
            merged[p].extend(row)
    return [sorted(row, key=lambda c: c[2])[:MAX_MEMBERS] for row in merged], length, late


def peel_steps(obs: Observation, token_ids: list[list[int]], labels: list[int], distances: list[float],
               budget: Budget, start: float, seed: int, options: SpanOptions) -> tuple[list[list[int]], list[int]] | None:
    """FedAvg: the whole update in step order, every later step recovered exactly, or None.

    The linker finds the first step's B sequences best (they have no drift: the smallest linker distances; under
    a large drift :func:`~adversary.span.subspace.drift_cut` keeps only their tokens, and they are all it finds). With
    them and their labels the server removes the first step (:func:`adversary.peel.peel_first_step`) and runs
    `span` on what is left: a plain gradient at w_1 when E = 2, else E - 1 steps, peeled again. Label sets are
    tried from the attack's own, one flip at a time, then the rest, until the rest certifies or the time is up."""
    size = obs.batch_size // obs.local_steps
    linked = [i for i in range(min(len(distances), len(token_ids))) if token_ids[i]]
    if len(linked) < size or size * obs.local_steps != obs.batch_size:  # a tight drift_cut can leave only the
        return None  # first step's members, and the linker only its sequences (the rest empty): enough to peel
    first = sorted(linked, key=lambda i: distances[i])[:size]
    ids, own = [token_ids[i] for i in first], tuple(labels[i] for i in first)
    flips = sorted(itertools.product(range(obs.num_labels), repeat=size),
                   key=lambda labs: sum(a != b for a, b in zip(labs, own)))
    deadline = budget.deadline(start)
    for labs in flips[:16]:
        if time.perf_counter() > deadline:
            return None
        rest = span_attack(peel_first_step(obs, ids, list(labs)), budget.remaining(deadline), seed, options)
        if rest.certified and all(rest.certified):
            return ids + rest.token_ids, list(labs) + rest.labels
    return None


def closer(obs: Observation, peeled: tuple[list[list[tuple[int, int]]], list[int]],
           seqs: list[list[tuple[int, int]]], settled: list[int]) -> bool:
    """Whether the batch completed by peeling is closer to the observed gradient (the yardstick) than the linker's
    own (its certified sequences and best uncertified minima, with the labels the model predicts for those)."""
    if len(seqs) != obs.batch_size or not all(seqs):
        return True
    ids = [[t for t, _ in q] for q in seqs]
    segments = [[s for _, s in q] for q in seqs]
    labels = batch_labels(obs, candidate_batch(obs, ids, segments=segments))
    labels[: len(settled)] = settled
    mine = candidate_distance(obs, ids, labels, segments)
    theirs = candidate_distance(obs, [[t for t, _ in q] for q in peeled[0]], peeled[1], [[s for _, s in q]
                                                                                       for q in peeled[0]])
    return theirs <= mine


def peel_found(obs: Observation, found: list[list[tuple[int, int]]], labels: list[int], budget: Budget, start: float,
               seed: int, options: SpanOptions, descents: int, limit: int
               ) -> tuple[tuple[list[list[tuple[int, int]]], list[int]] | None, int]:
    """One step, B > 1, the linker certified only some sequences: the rest of the batch, by `span` on the gradient
    left once those are taken off (:func:`adversary.peel.peel_sequences`), with the time and the descents left of
    ``limit``: (the whole batch and its labels, or None when nothing was found or nothing is left; the rest's
    descents)."""
    deadline = budget.deadline(start)
    if time.perf_counter() > deadline or descents >= limit:
        return None, 0
    rest_obs = peel_sequences(obs, [[t for t, _ in q] for q in found], labels, [[s for _, s in q] for q in found])
    rest = span_attack(rest_obs, budget.remaining(deadline, limit - descents), seed, options)
    if len(rest.token_ids) != rest_obs.batch_size or not all(rest.token_ids):
        return None, rest.iterations
    segments = rest.info.get("segment_ids") or [[0] * len(q) for q in rest.token_ids]
    return (found + [list(zip(q, s)) for q, s in zip(rest.token_ids, segments)],
            labels + list(rest.labels)), rest.iterations


@register("span", SpanOptions, certifies=True)
def span_attack(observation: Observation, budget: Budget, seed: int, options: SpanOptions) -> Reconstruction:
    """DAGER-style exact recovery (package doc; budget: module doc)."""
    start = time.perf_counter()
    obs, tok = observation, observation.tokenizer
    info: dict = {"method": "span", "special_ids": sorted(set(tok.all_special_ids)),
                  "analytic_labels": recover_labels(obs)}
    grads1 = attention_grads(obs, 0)
    if grads1 is None:
        raise ValueError("span needs the first attention layer's query/key/value weight gradients")
    span1 = gradient_span(grads1, error=obs.search_error_of(attention_names(obs, 0)))
    info.update(rank=span1.rank, span_tol=span1.tol, singular_drop=float(span1.singular[span1.rank] /
                span1.singular[span1.rank - 1]) if span1.rank < span1.singular.numel() else 1.0)
    empty = Reconstruction(texts=[""] * obs.batch_size, token_ids=[[] for _ in range(obs.batch_size)],
                           labels=list(info["analytic_labels"] or [0] * obs.batch_size), info=info)
    # The rank limit: the first layer's weight gradients have rank <= min(N tokens, hidden size d), so the
    # tokens are read from their span only while N <= d. N is known when the lengths are public.
    hidden = int(grads1[0].shape[1])
    tokens = int(sum(obs.seq_lengths)) if obs.seq_lengths else None
    info.update(hidden_size=hidden, tokens=tokens, over_rank_limit=None if tokens is None else tokens > hidden)
    if not span1.passed:
        reason = (f"past the rank limit: {tokens} tokens > hidden size {hidden}, the first layer's gradient is full "
                  f"rank and exact recovery is impossible" if info["over_rank_limit"] else
                  "no drop of the first layer's gradient spectrum to float32 rounding level (noised, or more tokens "
                  "than the hidden size)")
        info.update(span_check_passed=False, reason=reason)
        empty.seconds = time.perf_counter() - start
        return empty
    inputs = LayerInputs(obs.model)
    vocab = token_set(obs)
    info["token_set_size"] = int(vocab.numel())
    public = max(obs.seq_lengths) if obs.seq_lengths else None
    found, length, late = members_until(obs, span1, inputs, vocab, public, budget.deadline(start))
    info["max_length"] = length
    if obs.local_steps > 1:  # FedAvg: inputs of later steps drifted off the global weights' (drift_cut's doc)
        found, cut, gap = drift_cut(found)
        info.update(drift_cut=cut, drift_gap=gap)
    if late and obs.batch_size > 1:  # too little to link: the optimisation attacks start from scratch
        info.update(span_check_passed=False, deadline_reached=True, reason="deadline reached while testing which "
                    "tokens are in the span")
        empty.seconds = time.perf_counter() - start
        return empty
    info["deadline_reached"] = late
    settled: list[int] = []
    descents = 0
    distances: list[float] = []
    if obs.batch_size == 1:
        seqs = [[(row[0][0], row[0][1]) for row in found if row]]
        info["ambiguous_positions"] = sum(len(row) > 1 for row in found)
        ok = all(found) and length > 0 and (public is None or length == public)
    else:
        ledger = Ledger(obs, inputs, found)
        pools, resolved = ledger.pools()
        info["resolved_positions"] = sum(resolved)
        info["pool_sizes"] = [len(p) for p in pools]
        ffn_in = param_name(obs.model, obs.model.base_model.encoder.layer[0].intermediate.dense.weight)
        if ffn_in not in obs.gradients or not all(pools):
            info.update(span_check_passed=False, reason="no first-FFN gradient, or a position without candidates")
            empty.seconds = time.perf_counter() - start
            return empty
        span2 = linker_span(obs.gradients[ffn_in], obs.batch_size * len(pools), obs.search_error_of([ffn_in]))
        linker = Linker(obs, span2, ledger.superset)
        most = options.max_descents if options.max_descents is not None else 64 * obs.batch_size
        deadline = budget.deadline(start)
        if obs.local_steps > 1 and not math.isinf(deadline):  # keep the last quarter for the replay that certifies
            deadline = start + 0.75 * (deadline - start)  # drifted sequences never meet the linker's own bound
        # Stalled, peel_found (one step) or peel_steps (FedAvg, once the first step's B may be in) finds the rest.
        first = 1 if obs.local_steps == 1 else obs.batch_size // obs.local_steps
        limit = min(most, budget.iterations)
        done = assemble(obs, ledger, linker, tok.sep_token_id, seed, options.restarts, limit, deadline,
                        PEEL_PATIENCE, first)
        seqs, settled, descents, distances = done.sequences, done.labels, done.descents, done.distances
        info.update(rank2=span2.rank, sequence_distances=done.distances, certified_sequences=done.certified,
                    descents=descents, linker_calls=linker.calls, deadline_reached=done.out_of_time)
        if 0 < done.certified < obs.batch_size and obs.local_steps == 1:
            peeled, spent = peel_found(obs, seqs[:done.certified], list(settled), budget, start, seed, options,
                                       descents, limit)
            descents += spent
            info["descents"] = descents
            if peeled is not None and closer(obs, peeled, seqs, settled):
                seqs, settled = peeled
                info["peeled_sequences"] = done.certified
        ok = len(seqs) == obs.batch_size  # certified below by the reproduction test, the only judge (module doc)
    token_ids = [[t for t, _ in q] for q in seqs]
    token_ids += [[] for _ in range(obs.batch_size - len(token_ids))]  # nothing linked: B empty answers, not none
    batch = candidate_batch(obs, token_ids, segments=[[s for _, s in q] for q in seqs]) \
        if seqs and all(seqs) else None
    labels = batch_labels(obs, batch) if batch is not None else list(empty.labels)
    if obs.batch_size > 1 and batch is not None:
        labels[: len(settled)] = settled  # certified sequences: the label whose gradient the ledger matched
    gdist = float("nan")
    if batch is not None:  # every B: the assembled batch must reproduce the observed gradient to its precision
        reproduced, gdist = reproduces(obs, token_ids, labels, [[s for _, s in q] for q in seqs])
        ok = ok and reproduced
        if not ok and obs.local_steps > 1:  # FedAvg: no single gradient reproduces E drifting steps; a replay can
            peeled = peel_steps(obs, token_ids, labels, distances, budget, start, seed, options)
            if peeled is not None:  # in step order: the replay's first split is the right one
                token_ids, labels = peeled
                info["peeled"] = True
            replay = certify_by_replay(obs, token_ids, labels, budget.deadline(start))
            info.update(replay.info)
            if replay.passed:
                token_ids, labels, gdist, ok = replay.token_ids, replay.labels, replay.distance, True
                info["certified_by"] = "replay of the client's local SGD steps"
    else:
        ok = False
    info["span_check_passed"] = bool(ok)
    info["segment_ids"] = [[s for _, s in q] for q in seqs] if len(seqs) == len(token_ids) else None
    texts = [tok.decode(q, skip_special_tokens=True, clean_up_tokenization_spaces=True).strip() for q in token_ids]
    return Reconstruction(texts=texts, token_ids=token_ids, labels=labels, iterations=descents,
                          seconds=time.perf_counter() - start, gradient_distance=gdist, info=info,
                          certified=[bool(ok)] * len(token_ids))
