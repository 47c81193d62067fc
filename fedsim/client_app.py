"""The ClientApp: each SuperNode holds one shard of the train split and fine-tunes the global model on it.

Reply layout (one RecordDict):

* ``arrays``  (ArrayRecord): the locally trained weights, what any FedAvg client sends;
* ``metrics`` (MetricRecord): ``num-examples``, ``train-loss``, ``client`` (the partition id) and what the client's
  defense was, privacy-wise (``defenses.REPORT_KEYS``: noise multiplier, sample rate, steps, unit code; the same
  keys from every client, defended or not), which the server's accounting charges it for;
* ``truth``   (ConfigRecord, only when the server asks for it with ``report-truth``): the indices of the examples
  used. This is the simulator's scoring channel, not part of the protocol: the curious server's attack never
  reads it (see :class:`fedsim.strategies.CuriousServer`), only the scoring step does.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import task
from fedsim.core import seeds

app = ClientApp()


@app.train()
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
