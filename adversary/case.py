"""The case (threat model), kept apart from the attack algorithms.

``Observation`` is everything an honest-but-curious server holds for one client update. ``GroundTruth`` is what
the client really used; it travels on a separate channel and is read only by the scoring code.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedsim.core.text import decode
from fedsim.core.train import EPS32, Batch, GradientFn, batch_gradients, sgd_step

TYPICAL_MARGIN = 2.0  # searches allow twice the expected rounding error (Observation.search_error_of)


@dataclass
class Observation:
    """What the attacker sees: the model at the weights the gradient was taken at, the gradient, public facts.

    ``gradients`` maps parameter names (as in ``model.named_parameters()``) to the gradient of the batch's mean
    loss. ``seq_lengths`` (tokens per sequence, special tokens included) is a public fact in the TAG threat model;
    ``None`` means the attack must infer lengths from the gradient itself (as a federated server must).
    ``segment_ids`` (optional) tells where the first segment of a sentence pair ends; without it every sequence
    is treated as a single sentence.
    """

    model: PreTrainedModel
    gradients: dict[str, torch.Tensor]
    batch_size: int
    tokenizer: PreTrainedTokenizerBase
    seq_lengths: list[int] | None = None
    num_labels: int = 2
    segment_ids: list[list[int]] | None = None  # token type ids per sequence: the pair layout, public with lengths
    # Bound on the Frobenius norm of each gradient tensor's error, when the server derived the gradient from
    # rounded float32 weights ((w_global - w_client) / lr); public, since the server knows how it got it.
    # None: the gradient is exact up to its own float32 rounding (it was sent as a gradient).
    gradient_error: dict[str, float] | None = None
    # The expected size of that error (independent roundings add in quadrature, where the bound adds them up): a
    # few times smaller. Searches set their thresholds from it; certification never does (it keeps the bound).
    # None: searches use the bound.
    typical_error: dict[str, float] | None = None
    # FedAvg: the update is (w_0 - w_E) / (lr * E) after E local SGD steps on E batches of B (B = batch_size / E).
    # Public: the server set lr and E. 1 and None for a gradient of one step (FedSGD); see adversary.replay.
    local_steps: int = 1
    learning_rate: float | None = None
    # The truncation length the server configured for every client's tokenizer (public: it sent it); None: the
    # model's position table. Bounds the lengths an attack tries when the gradient does not show them (noise).
    max_length: int | None = None

    def error_of(self, names: list[str]) -> float:
        """The error bound of these tensors stacked together (0 when the gradient is exact)."""
        if not self.gradient_error:
            return 0.0
        return sum(self.gradient_error.get(n, 0.0) ** 2 for n in names) ** 0.5

    def live_rows(self, name: str) -> torch.Tensor:
        """Indices of the rows of gradient ``name`` above its error: a derived gradient (a peeled FedAvg residual)
        holds rounding residue, not zeros, in the rows no token of its batch reached (past the batch's length)."""
        norms = self.gradients[name].detach().double().norm(dim=1)
        return torch.nonzero(norms > (self.search_error_of([name]) if self.gradient_error else 0.0)).flatten()

    def search_error_of(self, names: list[str]) -> float:
        """The error a search expects of these tensors: :attr:`typical_error` with a margin, never above the bound."""
        if not self.typical_error:
            return self.error_of(names)
        typical = sum(self.typical_error.get(n, 0.0) ** 2 for n in names) ** 0.5
        return min(TYPICAL_MARGIN * typical, self.error_of(names))


@dataclass
class GroundTruth:
    """The client's private batch. Never passed to an attack; used only to score its output."""

    texts: list[str]
    token_ids: list[list[int]]
    labels: list[int]


@dataclass
class Reconstruction:
    """An attack's output for one batch. ``trajectory`` holds its decoded guesses at checkpoints (for Recover Rate).

    ``certified[i]``: sequence i is *certified*, i.e. the recovered batch reproduces the observed gradient within
    the published error bound plus float32 rounding (:func:`adversary.distance.reproduces`); False means it is a
    guess, however good. Default all False: only the reproduction test may say True.
    """

    texts: list[str]
    token_ids: list[list[int]]
    labels: list[int]
    iterations: int = 0
    seconds: float = 0.0
    gradient_distance: float = float("nan")
    trajectory: list[list[list[int]]] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    certified: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.certified) != len(self.token_ids):
            self.certified = [False] * len(self.token_ids)


def observe(model: PreTrainedModel, batch: dict[str, torch.Tensor], tokenizer: PreTrainedTokenizerBase, *,
            gradient_fn: GradientFn | None = None,
            public_lengths: bool = True) -> tuple[Observation, GroundTruth]:
    """Split one client step into what the server sees and what stays private.

    ``gradient_fn(model, batch) -> {name: grad}`` is what the client reveals: plain FedSGD by default, or a
    client-side defense wrapped around it. ``public_lengths`` hands the attacker the sequence lengths and the
    segment layout (the TAG threat model); without it the attack must read them from the gradient.
    """
    gradients = (gradient_fn or batch_gradients)(model, batch)
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    lengths = [int(n) for n in mask.sum(1).tolist()]
    segments = None
    if public_lengths and "token_type_ids" in batch:
        segments = [batch["token_type_ids"][b, :n].tolist() for b, n in enumerate(lengths)]
    observation = Observation(model=model, gradients={k: v.detach() for k, v in gradients.items()},
                              batch_size=len(lengths), tokenizer=tokenizer,
                              seq_lengths=lengths if public_lengths else None,
                              num_labels=int(getattr(model.config, "num_labels", 2)), segment_ids=segments)
    return observation, ground_truth(batch, tokenizer)


def ground_truth(batch: Batch, tokenizer: PreTrainedTokenizerBase) -> GroundTruth:
    """The private side of a batch: its sentences as the model saw them, their token ids and labels."""
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    token_ids = [row[:int(n)].tolist() for row, n in zip(batch["input_ids"], mask.sum(1))]
    return GroundTruth(texts=[decode(tokenizer, ids) for ids in token_ids], token_ids=token_ids,
                       labels=[int(y) for y in batch["labels"].tolist()])


# --- what a server derives from weights (FedSGD or FedAvg updates) ------------------------------------------------
def derive_gradient(global_state: Mapping[str, torch.Tensor], client_state: Mapping[str, torch.Tensor],
                    names: Iterable[str], scale: float) -> dict[str, torch.Tensor]:
    """(w_global - w_client) / scale in float64, returned as float32: the gradient (FedSGD, scale = lr) or the mean
    of the E local gradients (FedAvg, scale = lr * E) that a server computes from the weights a client returns."""
    return {n: ((global_state[n].double() - client_state[n].double()) / scale).float() for n in names}


def rounding_error(client_state: Mapping[str, torch.Tensor], gradients: Mapping[str, torch.Tensor], scale: float,
                   roundings: int) -> dict[str, float]:
    """Per tensor, the bound the server publishes on ||derived - true||_F from float32 rounding alone: each of the
    ``roundings`` weight updates behind the client's weights rounds them by at most ulp(w)/2 (ulp(w) here, for
    steps that cross a power of two), divided by ``scale``, plus the float32 cast of the result. Exact-recovery
    attacks certify against it, so it lives in one place."""
    norms = _ulp_and_gradient_norms(client_state, gradients)
    return {n: float(roundings * ulp / scale + EPS32 * grad) for n, (ulp, grad) in norms.items()}


def typical_rounding_error(client_state: Mapping[str, torch.Tensor], gradients: Mapping[str, torch.Tensor],
                           scale: float, roundings: int) -> dict[str, float]:
    """Per tensor, the expected ||derived - true||_F of the same roundings (:attr:`Observation.typical_error`):
    each is uniform on +-ulp/2 (variance ulp^2 / 12) and independent, so ``roundings`` of them add to
    sqrt(roundings / 12) ulp where the bound has ``roundings`` ulp (measured on a peeled tinybert4 E = 2 residual:
    the bound is 6.5x the real error, this estimate 1.3x)."""
    norms = _ulp_and_gradient_norms(client_state, gradients)
    return {n: float(math.sqrt(roundings / 12) * ulp / scale + EPS32 * grad) for n, (ulp, grad) in norms.items()}


def _ulp_and_gradient_norms(client_state: Mapping[str, torch.Tensor], gradients: Mapping[str, torch.Tensor]
                            ) -> dict[str, tuple[float, float]]:
    """Per tensor, ||ulp(w)||_F of the client's weights and ||g||_F of the derived gradient."""
    norms = {}
    for n, g in gradients.items():
        w = client_state[n].float().abs()
        ulp = torch.nextafter(w, torch.full_like(w, math.inf)) - w
        norms[n] = (float(ulp.double().norm()), float(g.double().norm()))
    return norms


def observe_fedavg(model: PreTrainedModel, batches: Sequence[Batch], tokenizer: PreTrainedTokenizerBase, lr: float,
                   *, gradient_fn: GradientFn | None = None,
                   max_length: int | None = None) -> tuple[Observation, GroundTruth]:
    """One FedAvg client (E = len(batches) plain SGD steps at ``lr`` from ``model``'s weights) split into what the
    curious server holds, exactly as :class:`fedsim.strategies.CuriousServer` derives it (the update as a gradient,
    its rounding bound, E and lr; no lengths), and the private batches, in step order."""
    client = copy.deepcopy(model).eval()
    for batch in batches:
        sgd_step(client, (gradient_fn or batch_gradients)(client, batch), lr)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    after = {n: p.detach() for n, p in client.named_parameters()}
    scale = lr * len(batches)
    before = {n: p.detach() for n, p in model.named_parameters()}
    gradients = derive_gradient(before, after, names, scale)
    observation = Observation(model=model, gradients=gradients, batch_size=sum(len(b["labels"]) for b in batches),
                              tokenizer=tokenizer, num_labels=int(getattr(model.config, "num_labels", 2)),
                              gradient_error=rounding_error(after, gradients, scale, len(batches)),
                              typical_error=typical_rounding_error(after, gradients, scale, len(batches)),
                              local_steps=len(batches), learning_rate=lr, max_length=max_length)
    truths = [ground_truth(b, tokenizer) for b in batches]
    truth = GroundTruth(texts=[t for g in truths for t in g.texts], token_ids=[i for g in truths for i in g.token_ids],
                        labels=[y for g in truths for y in g.labels])
    return observation, truth
