"""A Flower client mod that defends the update in a train reply, around any client function.

Like ``flwr.clientapp.mod.LocalDpMod`` it runs on the client, after the ClientApp's train function and before the
reply is sent: it takes the reply's single ArrayRecord as weights, forms the update against the arrays the server
sent, applies noise/clip/prune in order, and puts sent + defended update back. Unlike LocalDpMod it takes our
specs (so the accountant knows exactly what ran) and can work in gradient units: with ``lr`` set, the update is
read as the pseudo-gradient (w_sent - w_reply) / lr, which for one plain SGD step (FedSGD) is exactly the batch
gradient, so ``noise:sigma`` means the same here as in ``build_gradient_fn`` and ``fedleak attack``.
Server-side Flower DP wrappers would noise only the aggregate, which the curious server sees past.
"""

from __future__ import annotations

from logging import ERROR

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from defenses.specs import DpSgd, SpecsLike, format_defenses, parse_defenses
from defenses.transforms import defend_update
from fedsim.core.errors import UsageError
from fedsim.core.seeds import torch_generator


class DefenseMod:
    """``mod(msg, context, call_next)`` applying update-level defenses to train replies; other messages pass.

    ``lr``: read the update in gradient units (see the module docstring); None: in weight units, as LocalDpMod.
    ``seed``: noise is drawn from a generator seeded by (seed, partition-id, server round), so a run is
    reproducible whatever order clients run in; None uses torch's global RNG.
    """

    def __init__(self, specs: SpecsLike, lr: float | None = None, seed: int | None = None) -> None:
        self.defenses = parse_defenses(specs)
        for d in self.defenses:
            if isinstance(d, DpSgd):
                raise UsageError(f"defense {str(d)!r} needs per-example gradients, which a mod cannot see: apply it "
                                 f"in the client's gradient step (build_gradient_fn); a mod accepts noise, clip, prune")
        if lr is not None and not lr > 0:
            raise UsageError(f"lr must be positive, got {lr!r}")
        self.lr = lr
        self.seed = seed
        self._calls = 0

    def __repr__(self) -> str:
        return f"DefenseMod({format_defenses(self.defenses)!r}, lr={self.lr}, seed={self.seed})"

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN or not self.defenses:
            return call_next(msg, ctxt)
        if len(msg.content.array_records) != 1:
            return _error(msg, "DefenseMod expects exactly one ArrayRecord in the train message")
        sent = next(iter(msg.content.array_records.values()))
        reply = call_next(msg, ctxt)
        if reply.has_error():
            return reply
        if len(reply.content.array_records) != 1:
            return _error(reply, "DefenseMod expects exactly one ArrayRecord in the reply")
        key, received = next(iter(reply.content.array_records.items()))
        if list(sent.keys()) != list(received.keys()):
            return _error(reply, "DefenseMod: the reply's array names differ from those the server sent")
        reply.content.array_records[key] = self.defend(sent, received, self._generator(msg, ctxt))
        return reply

    def defend(self, sent: ArrayRecord, received: ArrayRecord, generator: torch.Generator | None) -> ArrayRecord:
        """sent + defended(received - sent), in gradient units when ``lr`` is set; non-float arrays unchanged."""
        before = {k: torch.from_numpy(np.array(a.numpy())) for k, a in sent.items()}
        after = {k: torch.from_numpy(np.array(a.numpy())) for k, a in received.items()}
        scale = -self.lr if self.lr is not None else 1.0
        update = {k: (after[k] - before[k]) / scale for k in after if after[k].is_floating_point()}
        defended = defend_update(self.defenses, update, generator)
        out = {k: (before[k] + scale * defended[k]) if k in defended else after[k] for k in after}
        return ArrayRecord({k: Array(v.numpy()) for k, v in out.items()})

    def _generator(self, msg: Message, ctxt: Context) -> torch.Generator | None:
        self._calls += 1
        if self.seed is None:
            return None
        node = int(ctxt.node_config.get("partition-id", ctxt.node_id))
        rnd = next((int(c["server-round"]) for c in msg.content.config_records.values() if "server-round" in c),
                   self._calls)
        return torch_generator(self.seed, node, rnd)


def _error(msg: Message, reason: str) -> Message:
    log(ERROR, reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)
