"""The runner behind ``fedleak simulate``: the Flower apps in-process on Ray, and the run's outputs.

Outputs in ``--out`` (all flushed every round, so an interrupted run keeps its completed rounds):

* ``rounds.jsonl``  one line per round: ``round, train_loss, eval_accuracy, eval_loss, epsilon, seconds, ...``;
* ``leakage.jsonl`` one line per attacked update, as jobs finish: ``round, client, method, reference,
  reconstruction, rouge1, rouge2, rougeL, recover_rate, seconds`` or ``error``;
* ``summary.json``  rewritten every round (``status`` running/completed/interrupted/failed; with an epsilon budget
  also ``defense_resolved`` and ``calibrated_sigma``, the sigma it was calibrated to);
* ``simulate.png``  dev accuracy and leakage per round (written at the end).

Files that hold private or reconstructed text are mode 0600 (``fedsim.core.io``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from typing import Any, Callable

import ray
from flwr.simulation import run_simulation

from fedsim.client_app import app as client_app
from fedsim.results import Recorder
from fedsim.server_app import make_server_app, resolve_defense
from fedsim.settings import Settings


def backend_config(settings: Settings, cpus: int) -> dict[str, Any]:
    """Each simulated client gets one CPU; no GPU for clients (the attack actor takes the GPU when there is one)."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "include_dashboard": False}}


def start_ray(cpus: int) -> None:
    """Start Ray before the simulation: a ServerApp-created actor otherwise races the backend's own ray.init."""
    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(p for p in [*sys.path, os.environ.get("PYTHONPATH", "")] if p)
    os.environ["PYTHONPATH"] = pythonpath
    with warnings.catch_warnings():  # a FutureWarning about GPU env vars that no user can act on
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})


def run(settings: Settings, verbose: bool = False, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One in-process federation on the Ray backend. Returns summary.json's content.

    An epsilon budget that no sigma can meet fails here (UsageError), before Ray starts or ``--out`` is touched;
    the ServerApp resolves it again (the same sigma) for the run itself and prints it."""
    resolve_defense(settings)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:  # Flower logs every step at INFO; the Recorder prints what a user needs
        flwr_logger.setLevel(logging.ERROR)
    recorder = Recorder(settings, echo)
    cpus = os.cpu_count() or 1
    start_ray(cpus)
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
