"""DP-SGD's gradient: per-example gradients (torch.func, vectorised), each clipped, summed, noised, averaged.

Per-example gradients come from ``vmap(grad(loss))`` over ``functional_call``, so each example runs as its own
batch of one with its own ids: Opacus's BERT pitfall (position/token-type ids built for batch 1 and broadcast) does
not arise. The 2-D padding mask is turned into BERT's additive 4-D mask beforehand, because transformers'
mask builder branches on the mask's values, which vmap cannot trace. Examples are processed in chunks so that
memory stays bounded (each chunk materialises chunk x parameters floats, the dense word-embedding gradient
included); within a chunk everything is vectorised.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import torch
from torch.func import functional_call, grad, vmap
from transformers import PreTrainedModel

from defenses.transforms import gaussian_like
from fedsim.core.train import MODEL_INPUTS, Batch

DEFAULT_CHUNK_ELEMENTS = 2**27  # about 512 MiB of float32 per-example gradients per chunk


def per_example_gradient_chunks(model: PreTrainedModel, batch: Batch, max_chunk: int | None = None
                                ) -> Iterator[dict[str, torch.Tensor]]:
    """Per-example gradients of the loss, a chunk of examples at a time: ``{name: [chunk, *param.shape]}``.

    The model is put in eval mode (dropout off, as in ``batch_gradients``); only trainable parameters get
    gradients. ``max_chunk`` caps the examples per chunk (default: as many as fit in ``DEFAULT_CHUNK_ELEMENTS``).
    """
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
    if "attention_mask" in inputs:
        dtype = next(iter(params.values())).dtype if params else torch.float32
        keep = inputs["attention_mask"][:, None, None, :].to(dtype)
        inputs["attention_mask"] = (1.0 - keep) * torch.finfo(dtype).min
    size = inputs["labels"].shape[0]
    if max_chunk is None:
        n_params = sum(p.numel() for p in params.values()) or 1
        max_chunk = max(1, DEFAULT_CHUNK_ELEMENTS // n_params)

    def example_loss(p: dict[str, torch.Tensor], example: dict[str, torch.Tensor]) -> torch.Tensor:
        one = {k: v.unsqueeze(0) for k, v in example.items()}
        return functional_call(model, (p, frozen, buffers), args=(), kwargs=one).loss

    per_example = vmap(grad(example_loss), in_dims=(None, 0))
    with warnings.catch_warnings():  # SDPA has no vmap batching rule on CPU; torch falls back, correctly
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        for start in range(0, size, max_chunk):
            yield per_example(params, {k: v[start:start + max_chunk] for k, v in inputs.items()})


def per_example_gradients(model: PreTrainedModel, batch: Batch) -> dict[str, torch.Tensor]:
    """All per-example gradients at once, ``{name: [B, *param.shape]}`` (small models and tests)."""
    chunks = list(per_example_gradient_chunks(model, batch))
    return {n: torch.cat([c[n] for c in chunks]) for n in chunks[0]}


def clipped_gradient_sum(model: PreTrainedModel, batch: Batch, c: float, max_chunk: int | None = None
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sum over examples of each example's gradient scaled to L2 norm at most ``c``; also the unclipped norms."""
    total: dict[str, torch.Tensor] = {}
    norms: list[torch.Tensor] = []
    for grads in per_example_gradient_chunks(model, batch, max_chunk):
        norm = torch.linalg.vector_norm(torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()]), dim=0)
        factor = torch.where(norm > c, c / norm, torch.ones_like(norm))
        for n, g in grads.items():
            s = torch.tensordot(factor.to(g.dtype), g, dims=1)
            total[n] = total[n] + s if n in total else s
        norms.append(norm)
    return total, torch.cat(norms)


def dp_sgd_gradients(model: PreTrainedModel, batch: Batch, sigma: float, c: float,
                     generator: torch.Generator | None = None, max_chunk: int | None = None
                     ) -> dict[str, torch.Tensor]:
    """(sum of per-example gradients clipped to ``c`` + N(0, (sigma*c)^2)) / B: the step DP-SGD releases.

    Divided by the actual batch size B (fixed-size batches; the accountant still models Poisson sampling at
    rate B/N, the usual practice). Keys and shapes match ``batch_gradients``.
    """
    total, _ = clipped_gradient_sum(model, batch, c, max_chunk)
    size = batch["labels"].shape[0]
    std = sigma * c
    return {n: ((s + gaussian_like(s, std, generator)) if std > 0 else s) / size for n, s in total.items()}
