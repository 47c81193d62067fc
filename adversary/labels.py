"""Analytic label recovery from the classifier's gradient (iDLG, Zhao et al. 2020; LLG, Wainakh et al. 2022).

With mean cross-entropy over B examples, the gradient of the output bias is (1/B) * sum_i (softmax_i - onehot_i).
Softmax entries are in (0, 1), so a class that no example has gets a positive entry and a class present in the batch
gets a negative one once enough examples carry it; for B = 1 the single negative entry *is* the label.
"""

from __future__ import annotations

import torch

from adversary.case import Observation


def classifier_bias_name(gradients: dict[str, torch.Tensor], num_labels: int) -> str | None:
    """Name of the output layer's bias: the last 1-D gradient of size ``num_labels``, preferring ``classifier``."""
    candidates = [n for n, g in gradients.items() if n.endswith("bias") and tuple(g.shape) == (num_labels,)]
    preferred = [n for n in candidates if "classifier" in n or "score" in n]
    pool = preferred or candidates
    return pool[-1] if pool else None


def recover_labels(observation: Observation) -> list[int] | None:
    """The batch's labels as a sorted multiset (order within the batch cannot be known), or None without a bias.

    Counts: sum_i (p_i - y_i) = B * grad, so n_c = B * (mean p_c - grad_c). The mean prediction is unknown to the
    server; we take the uniform 1/C, exact enough for an untrained model and a tie-break otherwise. Every class with
    a negative entry gets at least one example, and the counts are fixed up to sum to B.
    """
    name = classifier_bias_name(observation.gradients, observation.num_labels)
    if name is None:
        return None
    grad = observation.gradients[name].detach().double()
    bsz, classes = observation.batch_size, observation.num_labels
    if bsz == 1:
        return [int(grad.argmin())]
    estimate = bsz * (1.0 / classes - grad)
    counts = estimate.round().clamp_min(0).long()
    counts[grad < 0] = counts[grad < 0].clamp_min(1)
    while int(counts.sum()) > bsz:  # drop from the class whose estimate is furthest below its count
        slack = estimate - counts.double()
        slack[counts <= (grad < 0).long()] = float("inf")
        counts[int(slack.argmin())] -= 1
    while int(counts.sum()) < bsz:
        counts[int((estimate - counts.double()).argmax())] += 1
    return [c for c in range(classes) for _ in range(int(counts[c]))]
