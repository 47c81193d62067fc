"""`fedleak deploy`: Flower's deployment runtime as real processes on localhost (SuperLink, SuperNodes, `flwr run`),
with TLS and SuperNode authentication, and everything stopped afterwards, passed or failed.

Every process of a deployment carries its ``FLWR_HOME`` (under the test's tmp_path) in its environment, so
"nothing of this test is left" is checked by reading /proc, whatever Flower detached. Marker ``deploy``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedsim.cli import main
from fedsim.deploy.certs import make_node_keys, make_tls
from fedsim.deploy.flower import wait_connected
from fedsim.deploy.processes import Processes
from fedsim.deploy.run import LocalDeployment, run_config_toml
from fedsim.settings import Settings

# With ``pytest -n 2 --dist loadgroup`` (README): everything that starts Ray or Flower's SuperLink runs on one worker,
# one at a time; the light tests run on the other.
pytestmark = pytest.mark.xdist_group("ray")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def left_under(root: Path) -> list[str]:
    """Command lines of live processes whose FLWR_HOME lies under ``root`` (Linux /proc)."""
    hits = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:  # no /proc (macOS): stop()'s own check
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
            args = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        home = next((e[len(b"FLWR_HOME="):].decode(errors="replace") for e in env if e.startswith(b"FLWR_HOME=")), "")
        if home.startswith(str(root)) and stat.rsplit(")", 1)[-1].split()[0] != "Z":
            hits.append(f"{entry} {args[:120]}")
    return hits


@pytest.fixture
def local(tmp_path):
    deployment = LocalDeployment(tmp_path / "deploy")
    try:
        yield deployment
    finally:
        survivors = deployment.stop()
        assert not survivors and not left_under(tmp_path), (survivors, left_under(tmp_path))


# --- the parts, without Flower -------------------------------------------------------------------------------------
def test_the_server_certificate_chains_to_the_ca_and_the_node_keys_load_as_flower_loads_them(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key

    tls = make_tls(tmp_path)
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    keys = make_node_keys(tmp_path, "supernode-0")
    assert try_load_public_key(keys.public)  # what `flwr supernode register` does with it
    private = load_ssh_private_key(keys.private.read_bytes(), None)  # what flower-supernode does with its key
    assert private.curve.name == "secp384r1"
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tls.server_key, keys.private))  # private keys: 0600


def test_the_run_config_file_gives_back_the_same_settings():
    s = Settings(model="tiny", init="uniform:0.1", rounds=2, defense=["clip:c=1", "noise:sigma=0.1"],
                 attack_clients="all", out="/abs/run \"quoted\" é")
    assert Settings.from_run_config(tomllib.loads(run_config_toml(s))) == s


def test_stop_reaches_a_grandchild_that_left_for_its_own_session(tmp_path):
    """As Flower's SuperLink does with its SuperExec: a child started in a new session is stopped too."""
    procs = Processes(logs=tmp_path, env={**os.environ, "FLWR_HOME": str(tmp_path / "home")}, cwd=tmp_path)
    procs.start("parent", ["sh", "-c", f"{sys.executable} -c 'import os, time; os.setsid(); time.sleep(300)' & "
                                       "sleep 300"])
    deadline = time.time() + 20
    while len(procs.members()) < 3 and time.time() < deadline:
        time.sleep(0.1)
    assert len(procs.members()) == 3 and len(left_under(tmp_path)) == 3
    assert procs.stop(grace=5) == [] and left_under(tmp_path) == []


@pytest.mark.parametrize("bad", [["--supernodes", "0"], ["--port", "70000"], ["--port", "x"]])
def test_bad_deploy_options_are_one_line_exit_2(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["deploy", *bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad[0] in err[0]


# --- real processes ------------------------------------------------------------------------------------------------
@pytest.mark.deploy
def test_a_supernode_whose_key_is_not_registered_is_refused(local):
    local.start_superlink()
    known, unknown = local.keys("known"), local.keys("unknown")
    [node_id] = local.register([known])  # only this one
    local.start_supernode("known", known, 0, 2)
    local.start_supernode("unknown", unknown, 1, 2)
    refused = local.processes.started["unknown"]
    assert refused.wait(timeout=120) == 1, local.processes.tail("unknown")  # gives up at once, as an error
    log = local.processes.log("unknown").read_text()
    assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log  # Flower's own code for it
    assert "SuperNode ID" not in log  # it never got a node id
    assert wait_connected(local.processes, "known") == node_id  # the registered key's node is the one online


class _Watchdog(Exception):
    pass


def _expire(signum, frame):
    raise _Watchdog("fedleak deploy ran past the test's limit")


@pytest.mark.deploy
def test_deploy_runs_the_app_on_a_superlink_and_two_supernodes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the deployment's directory: under tmp_path
    out = tmp_path / "run"
    previous = signal.signal(signal.SIGALRM, _expire)
    signal.alarm(540)  # a stuck deployment fails the test and is torn down (the exception unwinds deploy's finally)
    try:
        # inline attack: the same ServerApp path without starting Ray inside the SuperLink's tree (time)
        code = main(["deploy", "--supernodes", "2", "--model", "tiny", "--init", "uniform:0.1", "--dataset", "pii",
                     "--rounds", "2", "--batch-size", "1", "--max-length", "16", "--eval-examples", "8",
                     "--attack", "tag", "--attack-iterations", "10", "--attack-clients", "all",
                     "--attack-rounds", "all", "--attack-backend", "inline", "--attack-threads", "1",
                     "--out", str(out)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        survivors = left_under(tmp_path)
    err = capsys.readouterr().err
    assert survivors == [], survivors
    assert code == 0, err[-3000:]
    assert "supernode 2/2 connected" in err and "round 2/2" in err
    assert [json.loads(r)["round"] for r in (out / "rounds.jsonl").read_text().splitlines()] == [1, 2]
    leaks = [json.loads(r) for r in (out / "leakage.jsonl").read_text().splitlines()]
    assert sorted((r["round"], r["client"]) for r in leaks) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert all("error" not in r and r["rouge1"] is not None and r["reference"] for r in leaks), leaks
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not list(tmp_path.glob("fedleak-deploy-*"))  # credentials and logs removed after a good run
