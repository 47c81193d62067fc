"""The ClientApp: each SuperNode holds one shard of the train split and fine-tunes the global model on it.

Reply layout (one RecordDict):

* ``arrays``  (ArrayRecord): the locally trained weights, what any FedAvg client sends;
* ``metrics`` (MetricRecord): ``num-examples``, ``train-loss``, ``client`` (the partition id) and what the client's
  defense was, privacy-wise (``defenses.REPORT_KEYS``: noise multiplier, sample rate, steps, unit code; the same
  keys from every client, defended or not), which the server's accounting charges it for;
* ``truth``   (ConfigRecord, only when the server asks for it with ``report-truth``): the indices of the examples
  used. This is the simulator's scoring channel, not part of the protocol: the curious server's attack never
  reads it (see :class:`fedsim.strategies.CuriousServer`), only the scoring step does.

Under ``--secagg`` the server runs Flower's SecAgg+ (``fedsim.strategies.secagg``) and ``secagg_mod`` puts
Flower's ``secaggplus_mod`` in front of ``train``: the mod answers the protocol's key stages itself; in the stage
that trains, ``train`` runs unchanged (its message translated from the legacy FitIns layout the protocol uses),
and what leaves the client is its *update* ``w_client - w_global`` (float64), clipped, quantised and masked by
the mod. The metrics travel in plain text, as in SecAgg+ (with ``secagg-clipped``: values the clipping range
cut); the scoring channel goes beside the protocol's records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from fedsim import task
from fedsim.core import seeds
from fedsim.strategies.secagg import CLIP_KEY, NAMES_KEY

app = ClientApp()


def secagg_mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round; any other message goes straight on.

    Flower's stochastic rounding draws from numpy's global generator: seeded here from (seed, round, client) and
    restored after, so the same seed gives the same aggregate (the masks are random, but cancel exactly)."""
    if RECORD_KEY_CONFIGS not in msg.content:
        return call_next(msg, context)
    fitins = msg.content.config_records.get("fitins.config")
    if fitins is None:  # setup, key sharing, unmasking: no training in these stages
        return secaggplus_mod(msg, context, call_next)
    client = int(context.node_config["partition-id"])
    with _numpy_seeded(seeds.derive_seed(int(fitins["seed"]), int(fitins["server-round"]), client, 13)):
        return secaggplus_mod(msg, context, lambda m, c: _train_as_update(m, c, call_next))


def _train_as_update(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """``train`` on the protocol's FitIns, answered as the FitRes the mod reads: the update, not the weights."""
    config = dict(msg.content["fitins.config"])
    names, clip = list(config.pop(NAMES_KEY)), float(config.pop(CLIP_KEY))
    arrays = parameters_to_ndarrays(compat.arrayrecord_to_parameters(msg.content["fitins.parameters"], True))
    start = {n: torch.from_numpy(np.array(a)) for n, a in zip(names, arrays, strict=True)}
    request = RecordDict({"arrays": ArrayRecord(start), "config": ConfigRecord(config)})
    reply = call_next(Message(content=request, metadata=msg.metadata), context)
    local = reply.content["arrays"].to_torch_state_dict()
    update = [(local[n].double() - start[n].double()).numpy() for n in names]
    metrics = dict(reply.content["metrics"])
    metrics["secagg-clipped"] = int(sum((np.abs(u) > clip).sum() for u in update))
    content = compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update),
                                                 int(metrics["num-examples"]), metrics), keep_input=False)
    if "truth" in reply.content:  # scoring channel, beside the protocol; the server's grid takes it out
        content["truth"] = ConfigRecord({**dict(reply.content["truth"]), "client": int(metrics["client"])})
    return Message(content=content, reply_to=msg)


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@app.train(mods=[secagg_mod])
def train(msg: Message, context: Context) -> Message:
    """FedSGD: one step on one batch of B. FedAvg: E steps on E fresh batches. Both plain SGD at ``lr``, the
    defense applied in every step."""
    cfg = msg.content["config"]
    client = int(context.node_config["partition-id"])
    num_clients = int(context.node_config["num-partitions"])
    server_round = int(cfg["server-round"])
    seed = int(cfg["seed"])
    torch.manual_seed(seeds.derive_seed(seed, server_round, client))  # defenses that draw noise stay reproducible

    data = task.load_split(str(cfg["dataset"]), "train", str(cfg["data-dir"]), seed)
    shard = task.client_shard(str(cfg["dataset"]), str(cfg["data-dir"]), str(cfg["partition"]), num_clients, client, seed)
    steps = int(cfg["local-steps"]) if cfg["mode"] == "fedavg" else 1
    batch_size = int(cfg["batch-size"])
    used = task.pick_examples(shard, steps * batch_size, seed, server_round, client)
    batches = [task.batch_of(data, used[i * batch_size:(i + 1) * batch_size], str(cfg["vocab"]), int(cfg["max-length"]))
               for i in range(steps)]

    gradient_fn, mechanism = task.client_defense(str(cfg["defense"]), batch_size, len(shard))

    model = task.model_with(str(cfg["model"]), data.num_labels, str(cfg["vocab"]), msg.content["arrays"].to_torch_state_dict())
    loss = task.local_train(model, batches, float(cfg["lr"]), gradient_fn)

    content = RecordDict({
        "arrays": ArrayRecord(task.state_of(model)),
        "metrics": MetricRecord({"num-examples": len(used), "train-loss": loss, "client": client,
                                 **mechanism.release(steps).to_metrics()}),
    })
    if cfg.get("report-truth", False):
        content["truth"] = ConfigRecord({"indices": used})  # scoring channel only
    return Message(content=content, reply_to=msg)
