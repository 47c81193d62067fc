"""The deployment's OS processes: started in their own sessions, found again as a tree, stopped together.

Flower detaches some of its own children (the SuperLink starts its ``flower-superexec`` in a new session, which starts
``flwr-serverapp``, which may start Ray), so signalling the process groups we created is not enough. ``Processes``
starts every command with ``start_new_session=True`` and, when stopping, collects the sessions of everything that
descends from them (a child keeps its session when its parent dies, so orphans are found too), sends SIGTERM to all
of it, waits, then SIGKILLs what is left. Uses ``ps`` (Linux and macOS), no extra dependency.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_table() -> list[tuple[int, int, int, str]]:
    """(pid, ppid, sid, command line) of every live process on the machine (zombies are dead: left out)."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,sess=,stat=,args="], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4 and all(p.isdigit() for p in parts[:3]) and not parts[3].startswith("Z"):
            rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[4] if len(parts) > 4 else ""))
    return rows


@dataclass
class Processes:
    """The commands of one deployment, each in its own session, logging to ``logs/NAME.log``."""

    logs: Path
    env: dict[str, str]
    cwd: Path
    started: dict[str, subprocess.Popen] = field(default_factory=dict)
    sessions: set[int] = field(default_factory=set)

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.log(name), "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=self.env, cwd=self.cwd, start_new_session=True)
        self.started[name] = process
        self.sessions.add(process.pid)
        return process

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join(self.log(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for(self, name: str, pattern: str, seconds: float) -> re.Match | None:
        """The first match of ``pattern`` in NAME's log; None if the process exits or ``seconds`` pass first."""
        process, deadline = self.started[name], time.monotonic() + seconds
        while True:
            text = self.log(name).read_text(errors="replace") if self.log(name).exists() else ""
            match = re.search(pattern, text)
            if match or process.poll() is not None or time.monotonic() > deadline:
                return match
            time.sleep(0.25)

    def members(self) -> list[tuple[int, str]]:
        """(pid, command line) of every live process of this deployment: the sessions we started, the sessions of
        their descendants (Flower's detached SuperExec and what it runs) and any of those sessions' orphans."""
        table = process_table()
        children: dict[int, list[int]] = {}
        for pid, ppid, _, _ in table:
            children.setdefault(ppid, []).append(pid)
        sid_of = {pid: sid for pid, _, sid, _ in table}
        todo = [p.pid for p in self.started.values()]
        while todo:
            pid = todo.pop()
            if pid in sid_of:
                self.sessions.add(sid_of[pid])
            todo.extend(children.get(pid, []))
        own = os.getsid(0)
        return [(pid, args) for pid, _, sid, args in table
                if sid in self.sessions and sid != own and pid != os.getpid()]

    def stop(self, grace: float = 10.0, note: Callable[[str], None] | None = None) -> list[tuple[int, str]]:
        """SIGTERM to every member, SIGKILL to those alive after ``grace`` seconds; returns what survived even that
        (empty when all is well)."""
        members = self.members()
        for pid, _ in members:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for process in self.started.values():
                process.poll()  # reap our own children so they do not linger as zombies
            if not self.members():
                break
            time.sleep(0.2)
        left = self.members()
        if left and note:
            note(f"{len(left)} process(es) ignored SIGTERM for {grace:.0f} s; killing them")
        for pid, _ in left:
            _signal(pid, signal.SIGKILL)
        for process in self.started.values():
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5
        while self.members() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.members()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

