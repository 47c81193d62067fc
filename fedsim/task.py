"""What the Flower apps share: the run's settings, the model, each client's shard and batches, local training.

Flower-style ``task.py``: the ClientApp, the ServerApp and the CLI all build on these helpers, so a setting means
the same thing everywhere. Settings travel as Flower ``run_config`` (kebab-case keys, ``flwr run .``) or as a
``Settings`` object (``fedleak simulate``); the server forwards the part a client needs in each train message,
so clients never depend on ``run_config`` (which ``run_simulation`` leaves empty).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any, Callable, Mapping

import numpy as np
import torch
from transformers import PreTrainedModel

from fedsim.data import TaskData, load_task, partition
from fedsim.errors import UsageError
from fedsim.models import build_model
from fedsim.text import decode, load_tokenizer, make_batch
from fedsim.train import Batch, batch_gradients, batch_loss, evaluate, sgd_step

MODES = ("fedsgd", "fedavg")
GradientFn = Callable[[PreTrainedModel, Batch], dict[str, torch.Tensor]]


@dataclass
class Settings:
    """One federation run. Field names are the CLI options and, with ``-`` for ``_``, the run_config keys."""

    model: str = "tinybert4"
    init: str = "normal:0.02"
    vocab: str = "bert-base-uncased"
    max_length: int = 64
    dataset: str = "pii"
    data_dir: str = ""
    clients: int = 2
    rounds: int = 3
    mode: str = "fedsgd"
    batch_size: int = 1
    local_steps: int = 1
    lr: float = 0.02
    partition: str = "iid"
    attack: str = "tag"
    attack_iterations: int = 150
    attack_clients: str = "all"  # "all" or K: attack K clients per round, drawn with the seed
    attack_backend: str = "ray"  # "ray": a Ray actor (GPU when visible); "inline": in the server thread (tests, debugging)
    attack_gpus: str = "auto"  # "auto": 1 when CUDA is visible, else 0; or a number
    attack_threads: int = 0  # torch threads for the attack; 0 = all cores but one
    attack_timeout: float = 600.0  # seconds to wait for outstanding attack jobs after the last round
    defense: list[str] = field(default_factory=list)  # client-side defenses, applied in order; empty = none
    eval_examples: int = 0  # 0 = the whole dev split
    seed: int = 0
    out: str = "runs/simulate"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; accepted: {', '.join(MODES)}")
        if self.attack != "none":
            from adversary.registry import available

            if self.attack not in available():
                raise UsageError(f"unknown attack {self.attack!r}; accepted: none, {', '.join(available())}")
        if self.defense:
            from defenses import parse_defenses

            parse_defenses(self.defense)  # a malformed spec fails here, not inside a client
        for name in ("clients", "rounds", "batch_size", "local_steps", "attack_iterations", "max_length"):
            if int(getattr(self, name)) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr!r}")
        self.attack_clients_count()  # raises on a bad value
        if self.attack_backend not in ("ray", "inline"):
            raise UsageError(f"unknown attack backend {self.attack_backend!r}; accepted: ray, inline")

    def attack_clients_count(self) -> int | None:
        """None for ``all``, else K > 0."""
        text = str(self.attack_clients).strip().lower()
        if text == "all":
            return None
        try:
            k = int(text)
        except ValueError:
            k = 0
        if k <= 0:
            raise UsageError(f"--attack-clients must be 'all' or a positive integer, got {self.attack_clients!r}")
        return k

    @property
    def gradient_scale(self) -> float:
        """Weight delta / this = the (averaged) gradient: lr for FedSGD, lr * E for FedAvg."""
        return self.lr * (self.local_steps if self.mode == "fedavg" else 1)

    @property
    def examples_per_update(self) -> int:
        return self.batch_size * (self.local_steps if self.mode == "fedavg" else 1)

    # --- Flower run_config <-> Settings -------------------------------------------------------------------------
    def to_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): ("+".join(v) if isinstance(v, list) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> "Settings":
        """Settings from ``context.run_config``: unknown keys are rejected, missing ones take the defaults."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in types:
                raise UsageError(f"unknown run_config key {key!r}; accepted: {', '.join(sorted(cls().to_run_config()))}")
            default = getattr(cls, name, None)
            if name == "defense":
                value = defense_list(value)
            elif isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            else:
                value = str(value)
            values[name] = value
        return cls(**values)

    def client_config(self) -> dict[str, Any]:
        """What the server sends clients each round (a Flower ConfigRecord): how to train, never what to leak."""
        return {"model": self.model, "vocab": self.vocab, "max-length": self.max_length, "dataset": self.dataset,
                "data-dir": self.data_dir, "partition": self.partition, "seed": self.seed, "mode": self.mode,
                "batch-size": self.batch_size, "local-steps": self.local_steps, "lr": self.lr,
                "defense": "+".join(self.defense)}


# --- data -------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def load_split(dataset: str, split: str, data_dir: str = "", seed: int = 0) -> TaskData:
    """A task split, loaded once per process (Ray keeps client actors alive between rounds)."""
    return load_task(dataset, split, data_dir or None, seed=seed)


@lru_cache(maxsize=16)
def client_shard(dataset: str, data_dir: str, spec: str, num_clients: int, client: int, seed: int) -> np.ndarray:
    """Indices (into the train split) that client ``client`` of ``num_clients`` holds; the same on every node."""
    labels = load_split(dataset, "train", data_dir, seed).dataset["label"]
    return partition(labels, num_clients, spec, seed)[client]


def pick_examples(shard: np.ndarray, count: int, seed: int, server_round: int, client: int) -> list[int]:
    """The examples a client trains on this round: drawn without replacement, fixed by (seed, round, client)."""
    rng = np.random.default_rng([seed, server_round, client])
    replace = count > len(shard)
    return [int(i) for i in rng.choice(shard, size=count, replace=replace)]


def batch_of(task: TaskData, indices: list[int], vocab: str, max_length: int) -> Batch:
    rows = task.dataset.select(indices)
    pairs = rows["text_pair"] if task.is_pair else None
    return make_batch(load_tokenizer(vocab), rows["text"], rows["label"], pairs, max_length)


# --- model ------------------------------------------------------------------------------------------------------
def initial_model(s: Settings, num_labels: int) -> PreTrainedModel:
    return build_model(s.model, s.init, num_labels=num_labels, vocab_size=len(load_tokenizer(s.vocab)), seed=s.seed)


@lru_cache(maxsize=2)
def _skeleton(model: str, num_labels: int, vocab_size: int) -> PreTrainedModel:
    # Architecture only; every use loads weights from the message, so the init here never matters.
    return build_model(model, "normal:0.02", num_labels=num_labels, vocab_size=vocab_size, seed=0)


def model_with(model: str, num_labels: int, vocab: str, state: Mapping[str, torch.Tensor]) -> PreTrainedModel:
    """A fresh model of the named architecture holding ``state`` (eval mode: dropout off)."""
    net = copy.deepcopy(_skeleton(model, num_labels, len(load_tokenizer(vocab))))
    net.load_state_dict(dict(state), strict=True)
    return net.eval()


def state_of(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


# --- training and evaluation ------------------------------------------------------------------------------------
def defense_list(value: str | list[str]) -> list[str]:
    """Defense settings from a run_config value: one string, specs composed with ``+`` (commas belong to ``dp:``)."""
    values = [value] if isinstance(value, str) else list(value)
    return [v.strip() for v in values if v.strip() and v.strip() != "none"]


def make_gradient_fn(defense: list[str] | str = "") -> GradientFn:
    """The client's gradient: the hook where client-side defenses plug in. Default: plain FedSGD."""
    specs = defense_list(defense)
    if not specs:
        return batch_gradients
    from defenses import build_gradient_fn  # only imported when a defense is asked for

    return build_gradient_fn(specs)


def local_train(model: PreTrainedModel, batches: list[Batch], lr: float, gradient_fn: GradientFn) -> float:
    """Plain SGD (no momentum, no weight decay), one step per batch, so the server can invert the update.

    Returns the mean training loss, measured before each step.
    """
    losses = []
    for batch in batches:
        with torch.no_grad():
            losses.append(float(batch_loss(model.eval(), batch)))
        sgd_step(model, gradient_fn(model, batch), lr)
    return float(np.mean(losses))


def evaluate_model(model: PreTrainedModel, task: TaskData, vocab: str, max_length: int, limit: int = 0,
                   batch_size: int = 64) -> tuple[float, float]:
    """(accuracy, loss) of the global model on the dev split (the server-side evaluation)."""
    n = len(task) if limit <= 0 else min(limit, len(task))
    batches = (batch_of(task, list(range(i, min(i + batch_size, n))), vocab, max_length) for i in range(0, n, batch_size))
    with torch.no_grad():
        return evaluate(model, batches)


def reference_texts(task: TaskData, indices: list[int], vocab: str, max_length: int) -> tuple[list[str], list[list[int]], list[int]]:
    """Texts, token ids and labels of the examples a client used, as the model saw them (truncated, lower-cased).

    Only the scoring step calls this (with indices from the ground-truth channel); attacks never do.
    """
    batch = batch_of(task, indices, vocab, max_length)
    tok = load_tokenizer(vocab)
    ids = [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
    return [decode(tok, i) for i in ids], ids, batch["labels"].tolist()
