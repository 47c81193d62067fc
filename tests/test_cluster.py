"""The attack-actor pool on a real Ray cluster: two nodes started here with `ray start`, joined by `fedleak simulate`.

The cluster belongs to this module alone: each node is a `ray start --block` in its own session (process group) with
its own temp dir, so stopping it signals those two groups and nothing else (no `ray stop`, which would stop every
Ray on the machine, other tests' and workers' included). It is stopped when the module ends, failed or not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedsim.attack_actor import auto_actors, resolve_gpus
from fedsim.core.errors import UsageError

# With ``pytest -n 2 --dist loadgroup`` (README): everything that starts Ray or Flower's SuperLink runs on one worker,
# one at a time; the light tests run on the other.
pytestmark = pytest.mark.xdist_group("ray")

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head node and one worker node on this machine, one CPU each, owned by this object."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="fl", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
        self.nodes: list[subprocess.Popen] = []
        self.address = ""

    def _node(self, name: str, *args: str) -> None:
        ports = [(flag, str(free_port())) for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                                        "--metrics-export-port", "--runtime-env-agent-port",
                                                        "--node-manager-port", "--object-manager-port")]
        command = [str(BIN / "ray"), "start", "--block", "--num-cpus", "1", "--num-gpus", "0",
                   "--object-store-memory", str(100 * 2**20), "--disable-usage-stats", "--temp-dir", self.temp,
                   *args, *(x for pair in ports for x in pair)]
        log = open(Path(self.temp) / f"{name}.log", "w")
        self.nodes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                           env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}))
        self._wait_started(name, self.nodes[-1])

    def _wait_started(self, name: str, process: subprocess.Popen, seconds: float = 180) -> None:
        log = Path(self.temp) / f"{name}.log"
        deadline = time.time() + seconds
        while time.time() < deadline:
            if "Ray runtime started" in log.read_text():
                return
            if process.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"ray {name} node did not start:\n{log.read_text()[-3000:]}")

    def start(self) -> None:
        import ray

        port = free_port()
        self._node("head", "--head", "--port", str(port), "--include-dashboard", "false",
                   "--ray-client-server-port", str(free_port()))
        self.address = f"{ray.util.get_node_ip_address()}:{port}"
        self._node("worker", "--address", self.address)

    def processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of every process of this cluster (its nodes' process groups)."""
        groups = {str(p.pid) for p in self.nodes}
        out = subprocess.run(["ps", "-eo", "pid=,pgid=,args="], capture_output=True, text=True).stdout
        rows = [line.split(None, 2) for line in out.splitlines()]
        return [(int(row[0]), row[2] if len(row) > 2 else "") for row in rows if len(row) > 1 and row[1] in groups]

    def stop(self) -> None:
        """SIGTERM to each node's process group (what `ray stop` sends), SIGKILL to whatever outlives it."""
        for node in self.nodes:
            _signal_group(node.pid, signal.SIGTERM)
        for node in self.nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(node.pid, signal.SIGKILL)
                node.wait(timeout=10)
        deadline = time.time() + 20
        while self.processes() and time.time() < deadline:  # raylets' workers exit on their own, shortly
            time.sleep(0.5)
        for node in self.nodes:
            _signal_group(node.pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster()
    try:
        local.start()
        yield local
    finally:
        local.stop()
        assert not local.processes(), "the test cluster outlived its teardown"


def simulate(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`fedleak simulate` on the tiny model: 2 clients, 2 rounds, every update attacked."""
    command = [str(BIN / "fedleak"), "simulate", "--model", "tiny", "--init", "uniform:0.1", "--dataset", "pii",
               "--clients", "2", "--rounds", "2", "--batch-size", "1", "--max-length", "24", "--eval-examples", "20",
               "--attack", "tag", "--attack-clients", "all", "--attack-threads", "1", "--attack-timeout", "600",
               "--out", str(out), *extra]
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**base, **(env or {})})


def finish(process: subprocess.Popen, seconds: float = 420) -> str:
    try:
        output, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"fedleak simulate did not finish in {seconds} s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.cluster
def test_jobs_spread_over_two_actors_on_a_joined_cluster(cluster, tmp_path):
    out = tmp_path / "run"
    finish(simulate(out, "--ray-address", cluster.address, "--attack-actors", "2", "--attack-rounds", "all",
                    "--attack-iterations", "20"))
    assert [r["round"] for r in read(out / "rounds.jsonl")] == [1, 2]
    leaks = read(out / "leakage.jsonl")
    assert sorted((r["round"], r["client"]) for r in leaks) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for r in leaks:
        assert "error" not in r, r
        assert r["device"] == "cpu" and len(r["node"]) == 56 and len(r["actor"]) == 32  # Ray's hex ids
    assert len({r["actor"] for r in leaks}) == 2  # both actors got jobs
    # Placement on distinct nodes is asked for (soft node affinity, round robin) but Ray may place an actor
    # elsewhere: one CI run of three had both on one node. What the pool guarantees is both actors working.
    assert 1 <= len({r["node"] for r in leaks}) <= 2
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


@pytest.mark.cluster
def test_a_killed_actor_s_job_is_retried_and_the_federation_completes(cluster, tmp_path):
    out = tmp_path / "run"
    # the address through RAY_ADDRESS; each job runs 8 s (its time budget), long enough to be killed mid-job
    process = simulate(out, "--attack-actors", "2", "--attack-rounds", "1", "--attack-iterations", "1000000",
                       "--attack-time-budget", "8", env={"RAY_ADDRESS": cluster.address})
    killed = None
    deadline = time.time() + 300
    while killed is None and process.poll() is None and time.time() < deadline:
        running = [pid for pid, args in cluster.processes() if args.startswith("ray::_AttackWorker.run")]
        if running:
            killed = running[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    assert killed is not None, "no attack job was seen running"
    finish(process)
    assert [r["round"] for r in read(out / "rounds.jsonl")] == [1, 2]
    leaks = read(out / "leakage.jsonl")
    assert sorted((r["round"], r["client"]) for r in leaks) == [(1, 0), (1, 1)]  # no job lost
    hit = [r for r in leaks if "retried" in r or "died" in r.get("error", "")]
    assert len(hit) == 1, leaks
    assert "died" in hit[0].get("retried", hit[0].get("error", ""))
    if "error" not in hit[0]:  # retried on another actor: scored like any other job
        assert hit[0]["actor"] not in hit[0]["retried"] and hit[0]["rouge1"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_an_address_where_no_cluster_answers_fails_at_once():
    from fedsim.simulate import start_ray

    import ray

    start = time.time()
    with pytest.raises(UsageError, match="--ray-address '127.0.0.1:1': nothing answers"):
        start_ray(1, f"127.0.0.1:{1}")
    with pytest.raises(UsageError, match="RAY_ADDRESS 'nowhere' is not an address"):
        start_ray(1, "nowhere", "RAY_ADDRESS")
    assert time.time() - start < 10 and not ray.is_initialized()


@pytest.mark.parametrize("bad", [-1, "two", 1.5])
def test_attack_actors_must_be_a_count(bad):
    from fedsim.settings import Settings

    with pytest.raises(UsageError, match="--attack-actors must be 0"):
        Settings(attack_actors=bad)
    assert Settings(attack_actors="3").attack_actors == 3


def test_auto_actor_count_and_gpus():
    assert resolve_gpus("auto", cluster_gpus=4) == 1.0 and resolve_gpus("auto", cluster_gpus=0) == 0.0
    assert resolve_gpus("0.5", cluster_gpus=0) == 0.5
    assert auto_actors(1.0, free_gpus=3) == 3 and auto_actors(0.5, free_gpus=3) == 6
    assert auto_actors(0.0, free_gpus=8) == 1 and auto_actors(1.0, free_gpus=0) == 1
