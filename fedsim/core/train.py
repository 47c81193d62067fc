"""The client's arithmetic: loss, the batch gradient a FedSGD client reveals, plain SGD steps, evaluation.

Dropout stays off (models are used in eval mode): the gradient is then a deterministic function of the private
batch, which is the worst case for the defender and the setting TAG and LAMP evaluate.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from transformers import PreTrainedModel

Batch = dict[str, torch.Tensor]  # tokenizer output plus "labels"
# What a client reveals for one batch: plain ``batch_gradients``, or a defended version of it.
GradientFn = Callable[[PreTrainedModel, Batch], dict[str, torch.Tensor]]
EPS32 = torch.finfo(torch.float32).eps  # float32 machine epsilon: the floor of any gradient's own precision
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def batch_loss(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over the batch."""
    return model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).loss


def batch_gradients(model: PreTrainedModel, batch: Batch) -> dict[str, torch.Tensor]:
    """Gradient of the batch's mean loss for every trainable parameter, keyed by parameter name."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad(batch_loss(model, batch), list(params.values()), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p)).detach() for (n, p), g in zip(params.items(), grads)}


@torch.no_grad()
def sgd_step(model: PreTrainedModel, gradients: dict[str, torch.Tensor], lr: float) -> None:
    """w <- w - lr * g: plain SGD, so the server can recover g = (w_before - w_after) / lr exactly (one rounding
    per weight: in place, 5x faster than forming lr * g first on a 22 M-parameter model)."""
    for name, param in model.named_parameters():
        if name in gradients:
            param.add_(gradients[name], alpha=-lr)


@torch.no_grad()
def evaluate(model: PreTrainedModel, batches: Iterable[Batch]) -> tuple[float, float]:
    """(accuracy, mean loss) over the batches."""
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    for batch in batches:
        out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})
        n = batch["labels"].shape[0]
        loss_sum += out.loss.item() * n
        correct += (out.logits.argmax(-1) == batch["labels"]).sum().item()
        total += n
    return (correct / total, loss_sum / total) if total else (float("nan"), float("nan"))
