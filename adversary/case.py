"""The case (threat model), kept apart from the attack algorithms.

``Observation`` is everything an honest-but-curious server holds for one client update. ``GroundTruth`` is what
the client really used; it travels on a separate channel and is read only by the scoring code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fedsim.core.text import decode
from fedsim.core.train import GradientFn, batch_gradients


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
    # FedAvg: the update is (w_0 - w_E) / (lr * E) after E local SGD steps on E batches of B (B = batch_size / E).
    # Public: the server set lr and E. 1 and None for a gradient of one step (FedSGD); see adversary.replay.
    local_steps: int = 1
    learning_rate: float | None = None

    def error_of(self, names: list[str]) -> float:
        """The error bound of these tensors stacked together (0 when the gradient is exact)."""
        if not self.gradient_error:
            return 0.0
        return sum(self.gradient_error.get(n, 0.0) ** 2 for n in names) ** 0.5


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
    token_ids = [batch["input_ids"][b, :n].tolist() for b, n in enumerate(lengths)]
    segments = None
    if public_lengths and "token_type_ids" in batch:
        segments = [batch["token_type_ids"][b, :n].tolist() for b, n in enumerate(lengths)]
    observation = Observation(model=model, gradients={k: v.detach() for k, v in gradients.items()},
                              batch_size=len(lengths), tokenizer=tokenizer,
                              seq_lengths=lengths if public_lengths else None,
                              num_labels=int(getattr(model.config, "num_labels", 2)), segment_ids=segments)
    truth = GroundTruth(texts=[decode(tokenizer, ids) for ids in token_ids], token_ids=token_ids,
                        labels=[int(y) for y in batch["labels"].tolist()])
    return observation, truth
