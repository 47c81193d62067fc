"""The runner behind ``fedleak simulate``: the Flower apps in-process on Ray, and the run's outputs.

Outputs in ``--out`` (all flushed every round, so an interrupted run keeps its completed rounds):

* ``rounds.jsonl``  one line per round: ``round, train_loss, eval_accuracy, eval_loss, epsilon, seconds, ...``;
* ``leakage.jsonl`` one line per attacked update, as jobs finish: ``round, client, method, reference,
  reconstruction, rouge1, rouge2, rougeL, recover_rate, seconds`` or ``error``, and where it ran: ``actor, node,
  device`` (``retried`` when its first actor died);
* ``summary.json``  rewritten every round (``status`` running/completed/interrupted/failed; with an epsilon budget
  also ``defense_resolved`` and ``calibrated_sigma``, the sigma it was calibrated to);
* ``simulate.png``  dev accuracy and leakage per round (written at the end).

Files that hold private or reconstructed text are mode 0600 (``fedsim.core.io``).

``run_in_process`` runs the same apps without Ray, on an :class:`InProcessGrid` (experiments that run many small
federations, such as ``experiments/secagg_study.py``; the attack must then be ``inline``).
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import sys
import threading
import traceback
import warnings
from typing import Any, Callable, Iterable

import ray
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.simulation import run_simulation
from flwr.supercore.task_identity import TaskIdentity

from fedsim.client_app import app as client_app
from fedsim.core.errors import UsageError
from fedsim.recorder import Recorder
from fedsim.server_app import make_server_app, resolve_defense, run_server
from fedsim.settings import Settings


def backend_config(settings: Settings, cpus: int) -> dict[str, Any]:
    """Each simulated client gets one CPU; no GPU for clients (the attack actor takes the GPU when there is one)."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "include_dashboard": False}}


def ray_address(settings: Settings) -> str:
    """The cluster to join: ``--ray-address``, else ``RAY_ADDRESS``, else "" (a local Ray)."""
    return settings.ray_address or os.environ.get("RAY_ADDRESS", "").strip()


def start_ray(cpus: int, address: str = "", name: str = "--ray-address") -> None:
    """Start Ray (or join the cluster at ``address``) before the simulation: a ServerApp-created actor otherwise
    races the backend's own ray.init. Flower's backend then uses this Ray: its clients and the attack actors run on
    the joined cluster. The workers get this process's import path (they import the project). ``name``: where the
    address came from, for the error message."""
    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(p for p in [*sys.path, os.environ.get("PYTHONPATH", "")] if p)
    os.environ["PYTHONPATH"] = pythonpath
    common = dict(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
                  runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    with warnings.catch_warnings():  # a FutureWarning about GPU env vars that no user can act on
        warnings.simplefilter("ignore", FutureWarning)
        if not address:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, **common)
            return
        check_reachable(address, name)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(f"{name} {address!r}: no Ray cluster there ({str(exc).strip().splitlines()[0]}); "
                             f"accepted: {ADDRESS_FORMS}") from None


ADDRESS_FORMS = "the address `ray start --head` prints (ip:port), ray://host:port, auto, or none for a local Ray"


def check_reachable(address: str, name: str = "--ray-address", seconds: float = 5.0) -> None:
    """Fail at once (UsageError) on an address where nothing listens: ray.init retries such an address for
    minutes. ``auto`` (the cluster `ray start` left on this machine) is left to Ray."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{name} {address!r} is not an address; accepted: {ADDRESS_FORMS}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as exc:
        raise UsageError(f"{name} {address!r}: nothing answers there ({exc.strerror or exc}); "
                         f"accepted: {ADDRESS_FORMS}") from None


def run(settings: Settings, verbose: bool = False, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One in-process federation on the Ray backend (a local Ray, or the cluster at ``--ray-address``). Returns
    summary.json's content.

    An epsilon budget that no sigma can meet fails here (UsageError), before Ray starts or ``--out`` is touched;
    the ServerApp resolves it again (the same sigma) for the run itself and prints it."""
    resolve_defense(settings)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:  # Flower logs every step at INFO; the Recorder prints what a user needs
        flwr_logger.setLevel(logging.ERROR)
    cpus = os.cpu_count() or 1
    # an address with no cluster fails here, before --out is touched
    start_ray(cpus, ray_address(settings), "--ray-address" if settings.ray_address else "RAY_ADDRESS")
    recorder = Recorder(settings, echo)
    stop = threading.Event()
    try:
        run_simulation(server_app=make_server_app(settings, recorder, stop), client_app=client_app,
                       num_supernodes=settings.clients, backend_config=backend_config(settings, cpus),
                       verbose_logging=verbose)
    except KeyboardInterrupt:
        stop.set()  # the ServerApp thread records the run as interrupted and ends
        recorder.done.wait(timeout=60)
        raise
    finally:
        flwr_logger.setLevel(level)
        if ray.is_initialized():
            ray.shutdown()
    return recorder.summary


class InProcessGrid(Grid):
    """Flower's apps in this process, without Ray. Each message goes to ``app`` as a copy (a transport would
    serialise it: SecAgg+ sends one record to every node, and its mod edits what it gets), with its node's own
    Context, kept across messages (SecAgg+ keeps its keys there); a client that raises answers with an error."""

    def __init__(self, num_clients: int, app: ClientApp = client_app) -> None:
        self.app = app
        self.nodes = {1000 + i: i for i in range(num_clients)}  # node id -> partition id
        self.contexts: dict[int, Context] = {}
        for name in ("task_id", "run_id", "node_id"):  # new Messages read the process's task identity
            if getattr(TaskIdentity, f"_{name}") is None:
                setattr(TaskIdentity, name, 1)

    def set_run(self, run) -> None:
        """One run per grid: nothing to set."""

    @property
    def run(self):
        raise NotImplementedError("an in-process grid has no Flower run")

    def create_message(self, *args, **kwargs):
        raise NotImplementedError("build Messages directly")

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]):
        raise NotImplementedError("use send_and_receive")

    def pull_messages(self, message_ids):
        raise NotImplementedError("use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            context = self.contexts.setdefault(node, Context(
                run_id=1, node_id=node, state=RecordDict(), run_config={},
                node_config={"partition-id": self.nodes[node], "num-partitions": len(self.nodes)}))
            try:
                replies.append(self.app(copy.deepcopy(msg), context))
            except Exception:  # noqa: BLE001 - as under Flower: the client's failure is an error reply
                replies.append(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                             reason=traceback.format_exc()), reply_to=msg))
        return replies


def run_in_process(settings: Settings, echo: Callable[[str], None] | None = None,
                   grid: Grid | None = None) -> dict[str, Any]:
    """One federation in this process (:class:`InProcessGrid`, or ``grid``): the same ServerApp and ClientApp
    code and the same files as :func:`run`; summary.json's content is returned. Needs ``--attack-backend inline``
    when an attack is on."""
    if settings.attack != "none" and settings.attack_backend != "inline":
        raise UsageError(f"an in-process run attacks inline; got --attack-backend {settings.attack_backend!r}")
    resolve_defense(settings)
    recorder = Recorder(settings, echo)
    run_server(grid or InProcessGrid(settings.clients), settings, recorder)
    return recorder.summary
