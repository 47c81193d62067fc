"""``fedleak deploy``: the federation on Flower's deployment runtime, as separate OS processes on this machine.

One SuperLink (TLS, SuperNode authentication, its own sqlite state) and N SuperNodes (each its own partition,
runtime port and key pair), then the fedleak app through ``flwr run --stream``: the ServerApp runs in the
SuperLink's process tree (with the attack actors' Ray, unless ``--ray-address`` names a cluster), each ClientApp in
its SuperNode's. It writes the same run directory as ``fedleak simulate``. Everything is torn down at the end,
on failure and on Ctrl-C (``Processes.stop``; also at interpreter exit, should anything escape the ``finally``).
The certificates, keys, Flower's state and every process's log live in a temporary directory, deleted afterwards
unless kept (``keep``, or the run failed: its logs are then where to look).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from fedsim.deploy import flower
from fedsim.deploy.certs import NodeKeys, make_node_keys, make_tls
from fedsim.deploy.processes import Processes, free_port
from fedsim.server_app import resolve_defense
from fedsim.settings import Settings


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class LocalDeployment:
    """A SuperLink and its SuperNodes on this machine, with their credentials under ``root``."""

    def __init__(self, root: Path, base_port: int = 0, echo: Callable[[str], None] = _stderr) -> None:
        self.root, self.base_port, self.echo = root, base_port, echo
        self.env = {**os.environ, "FLWR_HOME": str(root / "home"), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1"}
        self.processes = Processes(logs=root / "logs", env=self.env, cwd=root)
        self.tls = make_tls(root / "certs")
        self.address = ""
        self.nodes: dict[str, int] = {}  # SuperNode name -> node id, once connected

    def port(self, offset: int) -> int:
        return self.base_port + offset if self.base_port else free_port()

    def start_superlink(self) -> str:
        self.address = flower.start_superlink(self.processes, self.tls, self.port(0), self.root / "superlink.db")
        flower.write_connection(self.root / "home", self.address, self.tls.ca_cert)
        self.echo(f"superlink up on {self.address} (TLS, SuperNode authentication on)")
        return self.address

    def keys(self, name: str) -> NodeKeys:
        return make_node_keys(self.root / "keys", name)

    def register(self, keys: list[NodeKeys]) -> list[int]:
        """Register public keys at the SuperLink (in parallel: each ``flwr`` call is a few seconds of start-up)."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda k: flower.register(self.env, k), keys))

    def start_supernode(self, name: str, keys: NodeKeys, partition: int, partitions: int) -> None:
        flower.start_supernode(self.processes, name, self.address, self.tls.ca_cert, keys, partition, partitions,
                               self.port(1 + partition))

    def start_supernodes(self, count: int) -> None:
        """``count`` SuperNodes, partition i of ``count`` each, registered, started, and waited for."""
        keys = [self.keys(f"supernode-{i}") for i in range(count)]
        self.register(keys)
        for i, k in enumerate(keys):
            self.start_supernode(f"supernode-{i}", k, i, count)
        for i in range(count):
            self.nodes[f"supernode-{i}"] = flower.wait_connected(self.processes, f"supernode-{i}")
            self.echo(f"supernode {i + 1}/{count} connected (partition {i}, node {self.nodes[f'supernode-{i}']})")

    def stop(self) -> list[tuple[int, str]]:
        """Stop every process of the deployment; returns those that survived (none when all is well)."""
        return self.processes.stop(note=self.echo)


def run_config_toml(settings: Settings) -> str:
    """The settings as a ``flwr run --run-config`` TOML file (JSON scalars are valid TOML values)."""
    return "".join(f"{key} = {json.dumps(value, ensure_ascii=False)}\n"
                   for key, value in settings.to_run_config().items() if value is not None)


def run(settings: Settings, supernodes: int, *, port: int = 0, keep: bool = False, verbose: bool = False,
        echo: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Bring a local deployment up, run the app on it, tear it down. Returns ``run_id``, Flower's ``status`` and
    ``details`` for the run, the ``summary`` the app wrote (summary.json) and ``ok``; ``kept``: the directory
    with certificates and logs, when kept."""
    resolve_defense(settings)  # an impossible epsilon budget fails here, before any process starts
    out = Path(settings.out).expanduser().resolve()  # the ServerApp runs in the SuperLink's working directory
    settings = dataclasses.replace(settings, clients=supernodes, out=str(out))
    app = flower.app_root()
    root = Path(tempfile.mkdtemp(prefix="fedleak-deploy-"))
    deployment = LocalDeployment(root, port, echo)
    atexit.register(deployment.stop)
    result: dict[str, Any] = {"run_id": None, "status": "not started", "details": "", "summary": {}, "ok": False}
    try:
        deployment.start_superlink()
        deployment.start_supernodes(supernodes)
        config = root / "run-config.toml"
        config.write_text(run_config_toml(settings))
        started = time.time()
        result["run_id"] = flower.run_app(deployment.env, app, config, echo, verbose)
        if result["run_id"] is None:
            result["details"] = "flwr run did not start the run (see above)"
            return result
        result["status"], result["details"] = flower.run_status(deployment.env, result["run_id"])
        summary_path = out / "summary.json"
        fresh = summary_path.exists() and summary_path.stat().st_mtime >= started  # not an earlier run's
        result["summary"] = json.loads(summary_path.read_text()) if fresh else {}
        result["ok"] = (result["status"] == "finished:completed"
                        and result["summary"].get("status") == "completed")
        return result
    finally:
        left = deployment.stop()
        atexit.unregister(deployment.stop)
        if left:
            echo(f"could not stop: {', '.join(f'{pid} {args[:60]}' for pid, args in left)}")
        if keep or not result["ok"]:
            result["kept"] = str(root)
            echo(f"certificates, keys, Flower's state and process logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
