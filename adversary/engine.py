"""One gradient-matching engine for every optimisation attack (DLG, TAG, and later ones such as LAMP).

An attack is a :class:`MatchConfig` (distance, dummy init, optimiser, label strategy, decoding, range constraint)
plus, when it needs more, hooks called after each step. The engine optimises continuous word embeddings at the
free positions of a dummy batch so that the gradient they induce matches the observed one, then decodes them to
the nearest real tokens. It reads only the :class:`~adversary.case.Observation`, never ground truth.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from adversary.case import Observation, Reconstruction
from adversary.dummy import (WARM, Decoder, Layout, allowed_tokens, apply_warm, build_layout, embedding_range,
                             init_dummy, parse_dummy_init, parse_warm)
from adversary.labels import recover_labels
from adversary.distance import Distance, GradientTarget, squared_l2
from adversary.optim import OptimizerSpec
from adversary.options import Budget
from fedsim.core.errors import UsageError
from fedsim.core.text import decode

LABEL_STRATEGIES = ("joint", "analytic", "joint-analytic")


@dataclass(frozen=True)
class MatchConfig:
    """Everything that distinguishes one gradient-matching attack from another.

    ``labels``: ``joint`` optimises soft labels with the dummy (DLG, TAG); ``analytic`` fixes them from the
    classifier's gradient; ``joint-analytic`` optimises them starting from the analytic guess.
    ``clamp`` keeps the dummy inside the per-dimension range of the real word embeddings after each step.
    ``init``: a dummy init spec (:func:`adversary.dummy.parse_dummy_init`); ``tokens:IDS`` is a warm start from
    another attack's answer (:func:`adversary.dummy.warm_spec`: its pinned sequences become fixed positions).
    ``keep``: the final iterate (``last``) or the one with the lowest distance (``best``).
    ``regularizer(embeds, logits) -> scalar`` is added to the distance (e.g. LAMP's embedding-norm prior).
    """

    distance: Distance = squared_l2
    init: str = "normal"
    optimizer: OptimizerSpec = OptimizerSpec()
    labels: str = "joint"
    label_init_std: float = 1.0
    clamp: bool = False
    decode: str = "cos"
    keep: str = "last"
    record_every: int = 10
    snapshot_every: int = 0  # >0: info["dummy_snapshots"], model-input embeddings (B, L, H) at 0, k, 2k, ... and end
    regularizer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


Hook = Callable[["GradientMatcher", int], None]  # called after every step with the iteration number (1-based)


@dataclass
class MatchState:
    """What the engine optimises: the dummy embeddings (B, L, H) and the label logits or fixed labels."""

    dummy: torch.Tensor
    label_logits: torch.Tensor | None
    fixed_labels: torch.Tensor | None
    history: dict = field(default_factory=dict)  # scratch space for hooks (e.g. a discrete search's candidates)

    def labels(self) -> list[int]:
        if self.label_logits is not None:
            return self.label_logits.argmax(-1).tolist()
        return self.fixed_labels.tolist()  # type: ignore[union-attr]


class GradientMatcher:
    """Sets up the matching problem for one observation; :meth:`run` solves it. Hooks may edit ``state`` in place
    and call :meth:`distance` to score candidates (discrete steps of later attacks)."""

    def __init__(self, observation: Observation, config: MatchConfig, seed: int = 0) -> None:
        if config.labels not in LABEL_STRATEGIES:
            raise UsageError(f"unknown label strategy {config.labels!r}; accepted: {', '.join(LABEL_STRATEGIES)}")
        if config.keep not in ("last", "best"):
            raise UsageError(f"unknown keep rule {config.keep!r}; accepted: last, best")
        self.started = time.perf_counter()  # the runtime metric counts set-up as well
        self.deadline = math.inf  # perf_counter() value set by run(); long hooks (discrete moves) check it too
        self.observation, self.config = observation, config
        model = observation.model
        self.model = model
        self.embedding = model.get_input_embeddings().weight
        lengths = observation.seq_lengths
        self.lengths_inferred = lengths is None
        if lengths is None:
            lengths = [infer_length(observation)] * observation.batch_size
        if len(lengths) != observation.batch_size:
            raise UsageError(f"{len(lengths)} sequence lengths given for a batch of {observation.batch_size}")
        self.layout: Layout = build_layout(observation.tokenizer, lengths, observation.segment_ids)
        self.allowed = allowed_tokens(observation.tokenizer, self.embedding)
        self.start_ids: torch.Tensor | None = None  # a warm start (``tokens:`` init): ids to begin from, -1 random
        if parse_dummy_init(config.init)[0] == WARM:  # pinned sequences become fixed positions of the layout
            self.layout, self.start_ids = apply_warm(parse_warm(config.init), self.layout, self.allowed)
        self.decoder = Decoder(self.embedding, self.allowed, config.decode)
        with torch.no_grad():
            self.fixed_embeds = self.embedding[self.layout.fixed_ids].detach()
        self.names, self.params = matched_parameters(model, observation.gradients, self.embedding)
        self.target = GradientTarget.from_gradients(observation.gradients, self.names)
        self.analytic_labels = recover_labels(observation)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.state = self._initial_state()
        self.lo, self.hi = embedding_range(self.embedding, self.allowed) if config.clamp else (None, None)

    def _initial_state(self) -> MatchState:
        cfg, (bsz, width) = self.config, self.layout.shape
        shape = (bsz, width, self.embedding.shape[1])
        dummy = init_dummy(cfg.init, shape, self.embedding, self.allowed, self.generator,
                           self.start_ids).requires_grad_()
        classes = self.observation.num_labels
        known = self.analytic_labels
        if cfg.labels == "analytic" and known is not None:
            return MatchState(dummy, None, torch.tensor(known[:bsz]))
        logits = torch.randn((bsz, classes), generator=self.generator) * cfg.label_init_std
        if cfg.labels == "joint-analytic" and known is not None:
            logits = logits + 4.0 * F.one_hot(torch.tensor(known[:bsz]), classes)
        return MatchState(dummy, logits.requires_grad_(), None)

    def model_inputs(self, dummy: torch.Tensor) -> torch.Tensor:
        return self.layout.compose(dummy, self.fixed_embeds)

    def distance(self, dummy: torch.Tensor | None = None, create_graph: bool = True) -> torch.Tensor:
        """Gradient distance (plus regulariser) of a dummy batch; differentiable in the dummy and label logits."""
        state = self.state
        embeds = self.model_inputs(state.dummy if dummy is None else dummy)
        logits = self.model(inputs_embeds=embeds, attention_mask=self.layout.attention_mask,
                            token_type_ids=self.layout.token_type_ids).logits
        if state.label_logits is not None:
            loss = -(state.label_logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()
        else:
            loss = F.cross_entropy(logits, state.fixed_labels)
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph)
        value = self.config.distance(grads, self.target)
        if self.config.regularizer is not None:
            value = value + self.config.regularizer(embeds, logits)
        return value

    def decode_ids(self, dummy: torch.Tensor | None = None) -> list[list[int]]:
        return self.layout.token_ids(self.decoder(self.state.dummy if dummy is None else dummy))

    def run(self, iterations: int, hooks: tuple[Hook, ...] = (), seconds: float | None = None) -> Reconstruction:
        """Optimise for ``iterations`` steps, one gradient evaluation each; record decoded ids at checkpoints.

        ``seconds`` (counted from the matcher's set-up): a wall-clock deadline checked after every step; when it
        passes the loop stops and the answer is decoded from where it got (``info["deadline_reached"]``), by the
        config's ``keep`` rule as after a full run."""
        if iterations < 1:
            raise UsageError(f"iterations must be positive, got {iterations}")
        deadline = self.deadline = math.inf if seconds is None else self.started + seconds
        cfg, state = self.config, self.state
        variables = [state.dummy] + ([state.label_logits] if state.label_logits is not None else [])
        optimizer, scheduler = cfg.optimizer.build(variables, iterations)
        loss_curve: list[float] = []
        trajectory, checkpoints, snapshots, snapshot_at = [], [], [], []
        best = (float("inf"), state.dummy.detach().clone(), None)
        stopped_early, out_of_time, done = False, False, 0
        if cfg.snapshot_every:  # the starting point too: figures show the dummies moving from there
            snapshots.append(self.model_inputs(state.dummy).detach().clone())
            snapshot_at.append(0)

        def closure() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            value = self.distance()
            for var, grad in zip(variables, torch.autograd.grad(value, variables)):
                var.grad = grad
            loss_curve.append(value.item())
            return value

        with attack_mode(self.model):
            for it in range(1, iterations + 1):
                previous = [v.detach().clone() for v in variables]
                optimizer.step(closure)
                done = it
                if not math.isfinite(loss_curve[-1]) or not torch.isfinite(state.dummy).all():
                    with torch.no_grad():  # diverged (L-BFGS can): keep the last finite point
                        for var, old in zip(variables, previous):
                            var.copy_(old)
                    stopped_early = True
                    break
                if loss_curve[-1] < best[0]:
                    best = (loss_curve[-1], previous[0], previous[1] if len(previous) > 1 else None)
                if scheduler is not None:
                    scheduler.step()
                if self.lo is not None:
                    with torch.no_grad():
                        state.dummy.copy_(torch.maximum(torch.minimum(state.dummy, self.hi), self.lo))
                for hook in hooks:
                    hook(self, it)
                if it % cfg.record_every == 0 or it == iterations:
                    trajectory.append(self.decode_ids())
                    checkpoints.append(it)
                if cfg.snapshot_every and (it % cfg.snapshot_every == 0 or it == iterations):
                    snapshots.append(self.model_inputs(state.dummy).detach().clone())
                    snapshot_at.append(it)
                if it < iterations and time.perf_counter() > deadline:
                    out_of_time = True
                    break
            if cfg.keep == "best" and best[0] < float("inf"):
                with torch.no_grad():
                    state.dummy.copy_(best[1])
                    if best[2] is not None:
                        state.label_logits.copy_(best[2])  # type: ignore[union-attr]
            final_distance = float(self.distance(create_graph=False).detach()) if done else float("nan")
        ids = self.decode_ids()
        if not checkpoints or checkpoints[-1] != done or cfg.keep == "best":
            trajectory.append(ids)
            checkpoints.append(done)
        info = {"lengths": list(self.layout.lengths), "lengths_inferred": self.lengths_inferred,
                "analytic_labels": self.analytic_labels, "checkpoints": checkpoints,
                "label_strategy": cfg.labels, "stopped_early": stopped_early, "deadline_reached": out_of_time,
                "matched_tensors": len(self.names),
                "special_ids": sorted(set(self.observation.tokenizer.all_special_ids))}
        if cfg.snapshot_every:
            info["dummy_snapshots"], info["snapshot_iterations"] = snapshots, snapshot_at
            info["free_positions"] = self.layout.free.clone()  # which snapshot rows the attack optimised
        tokenizer = self.observation.tokenizer
        return Reconstruction(texts=[decode(tokenizer, seq) for seq in ids], token_ids=ids, labels=state.labels(),
                              iterations=done, seconds=time.perf_counter() - self.started,
                              gradient_distance=final_distance, trajectory=trajectory, loss_curve=loss_curve,
                              info=info)


def match(observation: Observation, config: MatchConfig, budget: Budget, seed: int = 0,
          hooks: tuple[Hook, ...] = ()) -> Reconstruction:
    """Run one gradient-matching attack for ``budget`` (steps, and a deadline if it has seconds): the entry point
    attack functions call."""
    return GradientMatcher(observation, config, seed).run(budget.iterations, hooks, budget.seconds)


def matched_parameters(model: torch.nn.Module, gradients: dict[str, torch.Tensor],
                       embedding: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
    """Parameters whose observed gradient the dummy must reproduce: all but the word embeddings, which are not in
    the dummy's graph when the attack optimises input embeddings."""
    names, params = [], []
    for name, param in model.named_parameters():
        if name in gradients and param.requires_grad and param is not embedding:
            if tuple(gradients[name].shape) != tuple(param.shape):
                raise UsageError(f"gradient for {name} has shape {tuple(gradients[name].shape)}, "
                                 f"the model's parameter {tuple(param.shape)}")
            names.append(name)
            params.append(param)
    if not names:
        raise UsageError("the observation has no gradients for the model's parameters (names must match)")
    return names, params


def infer_length(observation: Observation) -> int:
    """Padded sequence length from the gradient: the position-embedding rows that received gradient.

    A clean gradient has exact zeros past it. Under noise every row is non-zero; reading the length as "the last
    non-zero row" then gives the whole table (512 positions), and an optimisation attack spends its budget on a
    dummy 10-30x too long: a defense would look effective because the attack never got going. So a noised
    gradient's length is where the row norms fall to the noise floor (:func:`noise_floor_length`), and at most the
    truncation length the server configured (``observation.max_length``) when the noise hides it."""
    for name, grad in observation.gradients.items():
        if name.endswith("position_embeddings.weight"):
            norms = grad.detach().double().norm(dim=1)
            used = observation.live_rows(name)
            if len(used) == len(norms) > 2:
                found = noise_floor_length(norms)
                return min(found, observation.max_length or found)
            if len(used):
                return int(used.max()) + 1
    raise UsageError("sequence length not given and not readable from the gradient "
                     "(no non-zero position-embedding gradient); pass seq_lengths")


def noise_floor_length(norms: torch.Tensor, margin: float = math.log(1.25)) -> int:
    """The number of leading rows above the noise floor of a noised gradient's per-position norms.

    The log norms are split where a high prefix and a flat tail leave the least squared spread (the tail is noise
    alone); the floor is the tail's median, and the length is one past the last row more than ``margin`` (a factor
    of 1.25) and 6 robust deviations above it (noise rows' norms concentrate: a few percent apart for d = 384), so
    the staircase of shorter sequences stays inside. No such row (noise as large as the signal): the whole table."""
    x = norms.clamp_min(torch.finfo(torch.float64).tiny).log()
    n = len(x)
    csum, csq = torch.cumsum(x, 0), torch.cumsum(x * x, 0)
    k = torch.arange(1, n, dtype=torch.float64)
    left = csq[:-1] - csum[:-1] ** 2 / k
    right = (csq[-1] - csq[:-1]) - (csum[-1] - csum[:-1]) ** 2 / (n - k)
    split = int(torch.argmin(left + right)) + 1
    tail = x[split:]
    floor = float(tail.median())
    spread = 1.4826 * float((tail - floor).abs().median())
    above = (x > floor + max(margin, 6 * spread)).nonzero().flatten()
    return int(above.max()) + 1 if len(above) else n


@contextlib.contextmanager
def attack_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (dropout off, as the client's gradient was taken) and eager attention: the fused CPU attention
    kernels have no second derivative, and the attack differentiates through a gradient."""
    was_training = model.training
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    model.eval()
    if previous not in (None, "eager"):
        _set_attention(model, "eager")
    try:
        yield
    finally:
        if previous not in (None, "eager"):
            _set_attention(model, previous)
        model.train(was_training)


def _set_attention(model: torch.nn.Module, implementation: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(implementation)
    else:  # older transformers
        model.config._attn_implementation = implementation
