"""Flower's own deployment commands, as a deployment runs them: ``flower-superlink``, ``flwr supernode register``,
``flower-supernode``, ``flwr run`` and ``flwr list``.

Every ``flwr`` CLI call reads ``$FLWR_HOME/config.toml``, where :func:`write_connection` names this deployment's
SuperLink (``CONNECTION``) with the CA that signed its certificate. Facts checked against flwr 1.42: the SuperLink
serves its Fleet, Control and Runtime APIs over HTTPS on one port; with ``--enable-supernode-auth`` only SuperNodes
whose public key was registered (``flwr supernode register``) may connect; a SuperNode with an unknown key logs
Flower's exit code 305 ("Failed to activate SuperNode") and exits 1; ``flwr run`` exits 0 even when the ServerApp
fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from fedsim.core.errors import UsageError
from fedsim.deploy.certs import NodeKeys, Tls
from fedsim.deploy.processes import Processes

CONNECTION = "fedleak-deploy"
BIN = Path(sys.executable).parent  # flower-superlink & co. live beside this interpreter (the project's venv)


def command(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def write_connection(flwr_home: Path, address: str, ca_cert: Path) -> Path:
    """``$FLWR_HOME/config.toml`` naming this SuperLink (TLS: trust our CA) as the default connection."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                    f'address = "{address}"\nroot-certificates = {json.dumps(str(ca_cert))}\n')
    return path


def start_superlink(processes: Processes, tls: Tls, port: int, database: Path, seconds: float = 120) -> str:
    """The SuperLink with TLS and SuperNode authentication on, its state in ``database``; returns its address."""
    processes.start("superlink", [
        command("flower-superlink"), "--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key),
        "--ssl-ca-certfile", str(tls.ca_cert), "--enable-supernode-auth", "--database", str(database),
        "--host", "127.0.0.1", "--port", str(port)])
    if not processes.wait_for("superlink", r"Uvicorn running on https://", seconds):
        raise RuntimeError(f"flower-superlink did not come up on port {port}:\n{processes.tail('superlink')}")
    return f"127.0.0.1:{port}"


def flwr(env: dict[str, str], *args: str, seconds: float = 120) -> subprocess.CompletedProcess:
    """One ``flwr`` CLI call against this deployment's connection."""
    return subprocess.run([command("flwr"), *args], capture_output=True, text=True, env=env, timeout=seconds)


def register(env: dict[str, str], keys: NodeKeys) -> int:
    """Register a SuperNode's public key at the SuperLink (``flwr supernode register``); returns its node id."""
    done = flwr(env, "supernode", "register", str(keys.public), CONNECTION, "--format", "json")
    try:
        return int(json.loads(done.stdout)["node-id"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"flwr supernode register {keys.public} failed:\n{done.stdout}{done.stderr}") from None


def start_supernode(processes: Processes, name: str, superlink: str, ca_cert: Path, keys: NodeKeys,
                    partition: int, partitions: int, port: int) -> None:
    """One SuperNode holding partition ``partition`` of ``partitions``, with its own runtime ``port``."""
    processes.start(name, [
        command("flower-supernode"), "--superlink", superlink, "--root-certificates", str(ca_cert),
        "--auth-supernode-private-key", str(keys.private),
        "--node-config", f"partition-id={partition} num-partitions={partitions}", "--port", str(port)])


def wait_connected(processes: Processes, name: str, seconds: float = 120) -> int:
    """The node id a SuperNode reports once the SuperLink accepted it; RuntimeError if it exits or times out."""
    match = processes.wait_for(name, r"SuperNode ID: (\d+)", seconds)
    if not match:
        raise RuntimeError(f"{name} did not connect:\n{processes.tail(name)}")
    return int(match.group(1))


# Flower's and Ray's own log lines in the stream (shown with --verbose); the app's own lines pass through.
_NOISE = re.compile(r"^(\x1b\[\d+m)?(DEBUG|INFO|WARNING)\s*(\x1b\[0m)?\s*:|^(DEBUG|INFO|WARNING|ERROR):flwr:"
                    r"|^\d{4}-\d\d-\d\d[ T][\d:.,]+\s+(DEBUG|INFO|WARNING)\s|FutureWarning|^\s+warnings\.warn\(")


def run_app(env: dict[str, str], app: Path, run_config: Path, echo: Callable[[str], None],
            verbose: bool = False) -> int | None:
    """``flwr run APP CONNECTION --stream --run-config FILE``: streams the ServerApp's lines to ``echo`` and
    returns the run id (None if the run never started). Returns when the stream ends."""
    run_id = None
    process = subprocess.Popen([command("flwr"), "run", str(app), CONNECTION, "--stream", "--run-config",
                                str(run_config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, start_new_session=True)
    try:
        for line in _lines(process):
            started = re.search(r"Successfully started run (\d+)", line)
            run_id = int(started.group(1)) if started else run_id
            if verbose or not _NOISE.search(line):
                echo(line)
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait()
    return run_id


def _lines(process: subprocess.Popen) -> Iterator[str]:
    assert process.stdout is not None
    for line in process.stdout:
        yield line.rstrip("\n")


def run_status(env: dict[str, str], run_id: int, seconds: float = 60) -> tuple[str, str]:
    """(status, details) of a run from ``flwr list --run-id``, e.g. ``finished:completed``; waits up to
    ``seconds`` for the run to reach a ``finished`` state."""
    deadline, status, details = time.monotonic() + seconds, "unknown", ""
    while True:
        done = flwr(env, "list", CONNECTION, "--run-id", str(run_id), "--format", "json")
        try:
            row = json.loads(done.stdout)["runs"][0]
            status, details = row["status"], row.get("status-details") or ""
        except (ValueError, KeyError, IndexError, TypeError):
            details = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
            details = details[0]
        if status.startswith("finished") or time.monotonic() > deadline:
            return status, details
        time.sleep(2)


def app_root() -> Path:
    """The Flower app's directory: the source checkout whose pyproject.toml declares ``[tool.flwr.app]``."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.exists() or "[tool.flwr.app]" not in pyproject.read_text():
        raise UsageError(f"fedleak deploy runs the Flower app from a source checkout; no pyproject.toml with "
                         f"[tool.flwr.app] in {root}")
    return root
