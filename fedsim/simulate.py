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
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import warnings
from typing import Any, Callable

import ray
from flwr.simulation import run_simulation

from fedsim.client_app import app as client_app
from fedsim.core.errors import UsageError
from fedsim.recorder import Recorder
from fedsim.server_app import make_server_app, resolve_defense
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
