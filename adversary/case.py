"""The case (threat model), kept apart from the attack algorithms.

``Observation`` is everything an honest-but-curious server holds for one client update. ``GroundTruth`` is what
the client really used; it travels on a separate channel and is read only by the scoring code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Observation:
    """What the attacker sees: the model at the weights the gradient was taken at, the gradient, public facts.

    ``gradients`` maps parameter names (as in ``model.named_parameters()``) to the gradient of the batch's mean
    loss. ``seq_lengths`` (tokens per sequence, special tokens included) is a public fact in the TAG threat model;
    ``None`` means the attack must infer lengths from the gradient itself (as a federated server must).
    """

    model: PreTrainedModel
    gradients: dict[str, torch.Tensor]
    batch_size: int
    tokenizer: PreTrainedTokenizerBase
    seq_lengths: list[int] | None = None
    num_labels: int = 2


@dataclass
class GroundTruth:
    """The client's private batch. Never passed to an attack; used only to score its output."""

    texts: list[str]
    token_ids: list[list[int]]
    labels: list[int]


@dataclass
class Reconstruction:
    """An attack's output for one batch. ``trajectory`` holds its decoded guesses at checkpoints (for Recover Rate)."""

    texts: list[str]
    token_ids: list[list[int]]
    labels: list[int]
    iterations: int = 0
    seconds: float = 0.0
    gradient_distance: float = float("nan")
    trajectory: list[list[list[int]]] = field(default_factory=list)
    loss_curve: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)
