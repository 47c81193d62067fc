"""What the Flower apps share: the run's settings, the model, each client's shard and batches, local training.

Flower-style ``task.py``: the ClientApp, the ServerApp and the CLI all build on these helpers, so a setting means
the same thing everywhere. Settings travel as Flower ``run_config`` (kebab-case keys, ``flwr run .``) or as a
``Settings`` object (``fedleak simulate``); the server forwards the part a client needs in each train message,
so clients never depend on ``run_config`` (which ``run_simulation`` leaves empty).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Mapping

import numpy as np
import torch
from transformers import PreTrainedModel

from defenses import Mechanism, build_gradient_fn, mechanism
from fedsim.core import seeds
from fedsim.core.data import TaskData, load_task, partition
from fedsim.core.models import build_model
from fedsim.core.text import decode, load_tokenizer, make_batch
from fedsim.core.train import Batch, GradientFn, batch_loss, evaluate, sgd_step
from fedsim.settings import Settings, defense_list

# --- data -------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def load_split(dataset: str, split: str, data_dir: str = "", seed: int = 0) -> TaskData:
    """A task split, loaded once per process (Ray keeps client actors alive between rounds)."""
    return load_task(dataset, split, data_dir or None, seed=seed)


def client_shard(dataset: str, data_dir: str, spec: str, num_clients: int, client: int, seed: int) -> np.ndarray:
    """Indices (into the train split) that client ``client`` of ``num_clients`` holds; the same on every node."""
    return _shards(dataset, data_dir, spec, num_clients, seed)[client]


@lru_cache(maxsize=4)
def _shards(dataset: str, data_dir: str, spec: str, num_clients: int, seed: int) -> list[np.ndarray]:
    # the label column as one Arrow read: the numpy format still converts SST-2's 67k rows one by one (11 s)
    labels = load_split(dataset, "train", data_dir, seed).dataset.with_format("arrow")["label"]
    return partition(np.asarray(labels), num_clients, spec, seed)


def pick_examples(shard: np.ndarray, count: int, seed: int, server_round: int, client: int) -> list[int]:
    """The examples a client trains on this round: drawn without replacement, fixed by (seed, round, client)."""
    rng = seeds.rng(seed, server_round, client)
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
def client_defense(defense: str | list[str], batch_size: int, shard_size: int) -> tuple[GradientFn, Mechanism]:
    """The one place a client's defense is built: the gradient step it trains with (defenses run inside every SGD
    step: DP-SGD needs the per-example gradients there) and the mechanism that step is, which the client reports so
    the server charges it for what it ran. No defense: plain ``batch_gradients``, mechanism ``none``."""
    specs = defense_list(defense)
    return build_gradient_fn(specs), mechanism(specs, batch_size, shard_size)


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
