"""Where reconstruction jobs run: a pool of Ray actors on the federation's cluster (GPUs when it has them), or inline.

A job is attack, then score, in two places. The actor (or the inline attacker) runs :func:`attack_job`: it gets
the job and the :class:`~adversary.case.Observation` only, and returns the :class:`~adversary.case.Reconstruction`
with timing and device facts. The GroundTruth never leaves the server process: the attacker keeps it beside the
job at submission, and :func:`score_result` scores the returned reconstruction there when it is collected
(``poll``/``drain``), with the special-token ids of the server's tokenizer. A job that raises becomes a record
with ``error``: the federation never stops for it. Every record says where it ran: ``actor`` (the Ray actor id),
``node`` (the Ray node id) and ``device`` (node and device None for a job that returned nothing; actor ``inline``
and no node for the inline attacker).

Both attackers share one interface (:class:`Attacker`), which :class:`fedsim.strategies.CuriousServer` drives
through the run: ``submit(job, observation, truth)`` (non-blocking for Ray; ``truth`` stays here), ``poll(timeout)``
(the records finished so far, scored, waiting at most ``timeout`` seconds), ``pending``, ``drain(timeout,
reason)`` (wait for the rest, at most ``timeout`` seconds; what is still running then becomes an error record;
then close) and ``close()``.
"""

from __future__ import annotations

import dataclasses
import os
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any, Collection, Protocol

import ray
import ray.exceptions
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from adversary import Budget, Reconstruction, run_attack
from adversary.metrics import score, special_ids_of


@dataclass(frozen=True)
class Job:
    round: int
    client: int
    method: str
    iterations: int
    seed: int
    seconds: float | None = None  # the attack's wall-clock budget (--attack-time-budget); None: iterations only


class Attacker(Protocol):
    """Where jobs run; the curious server submits each round, polls, and drains once at the end."""

    def submit(self, job: Job, observation, truth) -> None: ...

    def poll(self, timeout: float = 0.0) -> list[dict[str, Any]]: ...

    def drain(self, timeout: float = 0.0, reason: str = "cancelled") -> list[dict[str, Any]]: ...

    def close(self) -> None: ...

    @property
    def pending(self) -> int: ...


SCORE_KEYS = ("rouge1", "rouge2", "rougeL", "recover_rate", "token_accuracy", "label_correct", "token_precision",
              "token_f1", "rouge1_random_pairing", "certified_share")


def attack_job(job: Job, observation) -> dict[str, Any]:
    """The actor's side: attack one update (no ground truth here). Never raises. The result holds the
    Reconstruction under ``"result"`` (or ``error``), and ``seconds``."""
    start = time.perf_counter()
    out: dict[str, Any] = {"round": job.round, "client": job.client, "method": job.method}
    try:
        out["result"] = run_attack(job.method, observation, Budget(job.iterations, job.seconds), seed=job.seed)
    except Exception as exc:  # noqa: BLE001 - a failed attack is a result, not a crash
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc(limit=6)
    out["seconds"] = time.perf_counter() - start
    return out


def score_result(result: dict[str, Any], truth, special_ids: Collection[int] | None) -> dict[str, Any]:
    """The server's side: the leakage record of an attack result (:func:`attack_job`), scored against ``truth``
    with the server tokenizer's ``special_ids``. Never raises."""
    result = dict(result)
    reconstruction: Reconstruction | None = result.pop("result", None)
    record: dict[str, Any] = {"round": result.pop("round"), "client": result.pop("client"),
                              "method": result.pop("method"),
                              "reference": list(truth.texts) if truth is not None else None,
                              "reconstruction": list(reconstruction.texts) if reconstruction is not None else None}
    if reconstruction is not None and "error" not in result:
        record["certified"] = list(reconstruction.certified)  # per sequence: reproduces the gradient
        info = reconstruction.info
        record["over_rank_limit"] = info.get("over_rank_limit")  # None: unknown (the lengths are private)
        if not all(reconstruction.certified) and (info.get("reason") or info.get("span_reason")):
            record["why_not_certified"] = info.get("reason") or info.get("span_reason")  # the exact path's own words
        try:
            if truth is None:
                raise RuntimeError("the client reported no ground truth; the reconstruction cannot be scored")
            scores = score(reconstruction, truth, special_ids)
            record.update({key: scores.get(key) for key in SCORE_KEYS})
            record["iterations"] = reconstruction.iterations
            record["gradient_distance"] = reconstruction.gradient_distance
        except Exception as exc:  # noqa: BLE001 - recorded like a failed attack
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc(limit=6)
    return {**record, **result}


def run_job(job: Job, observation, truth) -> dict[str, Any]:
    """Attack then score in this process (tests, scripts): :func:`attack_job` then :func:`score_result`."""
    return score_result(attack_job(job, observation), truth, special_ids_of(observation.tokenizer))


def error_record(job: Job, message: str) -> dict[str, Any]:
    return {"round": job.round, "client": job.client, "method": job.method, "reference": None,
            "reconstruction": None, "error": message, "seconds": None, "actor": None, "node": None, "device": None}


def _order(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r["round"], r["client"]))


class InlineAttacker:
    """Runs each job at submission, in the caller's thread: blocking, for tests and debugging (no Ray)."""

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads
        self._done: list[dict] = []
        self.started = True  # nothing to start; mirrors RayAttacker.started

    def submit(self, job: Job, observation, truth) -> None:
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        special = special_ids_of(observation.tokenizer)
        try:
            result = attack_job(job, observation)
        finally:
            torch.set_num_threads(previous)
        self._done.append({**score_result(result, truth, special), "actor": "inline", "node": None, "device": "cpu"})

    def poll(self, timeout: float = 0.0) -> list[dict]:
        done, self._done = self._done, []
        return _order(done)

    def drain(self, timeout: float = 0.0, reason: str = "cancelled") -> list[dict]:
        return self.poll()

    def close(self) -> None:
        """Nothing runs in the background."""

    @property
    def pending(self) -> int:
        return 0


class _AttackWorker:
    """The body of the Ray actor: one process that runs jobs one after another."""

    def __init__(self, threads: int = 0, niceness: int = 10) -> None:
        torch.set_num_threads(threads or default_threads())
        if niceness:  # the federation first: rounds get the cores, the attack takes what is left
            try:
                os.nice(niceness)
            except OSError:
                pass
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        context = ray.get_runtime_context() if ray.is_initialized() else None
        self.where = {"actor": context.get_actor_id() if context else None,
                      "node": context.get_node_id() if context else None}

    def run(self, job: Job, observation) -> dict[str, Any]:
        """Attack only (:func:`attack_job`); the ground truth never comes here."""
        if self.device == "cpu":
            return {**attack_job(job, observation), "device": "cpu", **self.where}
        result = attack_job(job, _to(observation, self.device))
        if "error" not in result:
            return {**result, "device": self.device, **self.where}
        # An attack that cannot run on the GPU (tensors made on the CPU) still gets its answer, on the CPU,
        # within what is left of its time budget (at least a second, to answer at all).
        if job.seconds is not None:
            job = dataclasses.replace(job, seconds=max(job.seconds - result["seconds"], 1.0))
        retry = attack_job(job, _to(observation, "cpu"))
        return {**retry, "device": "cpu", "gpu_error": result["error"], **self.where}

    def device_name(self) -> str:
        return self.device


def _to(observation, device: str):
    observation.model.to(device)
    observation.gradients = {k: v.to(device) for k, v in observation.gradients.items()}
    return observation


def default_threads() -> int:
    """All cores but one: the clients and the server keep running beside the attack, and an oversubscribed
    OpenMP pool (threads spinning for a busy core) slows torch down far more than one thread fewer does."""
    return max(1, (os.cpu_count() or 2) - 1)


def resolve_gpus(spec: str | float | int, cluster_gpus: float | None = None) -> float:
    """GPUs per attack actor. ``auto``: one when the cluster has GPUs (``cluster_gpus``; None: when CUDA is visible
    here), else none (Ray never places an actor that asks for a GPU the cluster lacks)."""
    if str(spec).strip().lower() == "auto":
        present = torch.cuda.is_available() if cluster_gpus is None else cluster_gpus > 0
        return 1.0 if present else 0.0
    return float(spec)


class _Task:
    """A submitted job while it waits or runs: its observation in Ray's object store (kept for a retry), its ground
    truth here, and where it runs."""

    def __init__(self, job: Job, observation: Any, truth: Any, special: frozenset[int] | None) -> None:
        self.job, self.observation, self.truth, self.special = job, observation, truth, special
        self.slot: int | None = None  # the pool slot it was sent to
        self.actor: str | None = None  # the id of the actor in that slot
        self.retried: str | None = None  # why it was resubmitted (its first actor died)


def _actor_id(handle: Any) -> str | None:
    actor_id = getattr(handle, "_actor_id", None)  # Ray has no public accessor on the handle
    return actor_id.hex() if actor_id is not None else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class RayAttacker:
    """A pool of Ray attack actors, created at the first job (by then the simulation backend has initialised Ray)
    and spread over the cluster's nodes.

    ``actors``: how many (0: one per free GPU of the cluster, else 1). Each asks for ``num_gpus`` GPUs (``auto``:
    one when the cluster has GPUs) and ``num_cpus`` CPUs (0: Flower's client pool reserves every CPU of the
    cluster, so an actor that asked for one would never be placed). Jobs wait in a queue here and go to the
    least-loaded actor, at most ``depth`` per actor (one running, the next waiting in its mailbox so that it does
    not idle between polls): ``submit`` never blocks on a busy pool. A job whose actor dies (killed, out of memory,
    node lost) is resubmitted once, after the dead actor has been replaced, then recorded as an error.
    ``address``: the cluster to join when nobody has initialised Ray in this process (``flwr run``)."""

    def __init__(self, actors: int = 0, num_gpus: str | float = "auto", num_cpus: float = 0.0, threads: int = 0,
                 address: str = "", depth: int = 2) -> None:
        self.actors, self.gpu_spec, self.num_cpus, self.threads = actors, num_gpus, num_cpus, threads
        self.address, self.depth = address, depth
        self.num_gpus: float | None = None  # per actor, resolved against the cluster at the first job
        self._pool: list[Any] = []  # actor handles, one per slot
        self._nodes: list[str] = []  # the nodes the slots go to, in turn
        self._queue: deque[_Task] = deque()
        self._running: dict[Any, _Task] = {}  # ObjectRef of the actor call -> its task
        self._failed: list[dict] = []  # jobs that could not even be submitted

    @property
    def started(self) -> bool:
        return bool(self._pool)

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._running)

    def _start(self) -> None:
        if self._pool:
            if not ray.is_initialized():  # the simulation has shut Ray down (interrupted): do not start another
                raise RuntimeError("Ray is no longer running")
            return
        if not ray.is_initialized():  # a ServerApp run without the Ray simulation backend (flwr run, deploy)
            # "local" without an address: None would join whatever cluster /tmp/ray/ray_current_cluster names
            ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False)
        self.num_gpus = resolve_gpus(self.gpu_spec, ray.cluster_resources().get("GPU", 0.0))
        count = self.actors or auto_actors(self.num_gpus, ray.available_resources().get("GPU", 0.0))
        self._nodes = spread_nodes(ray.nodes(), self.num_gpus)
        self._pool = [self._new_actor(slot) for slot in range(count)]

    def _new_actor(self, slot: int) -> Any:
        """The actor of ``slot``, on the slot-th node that can hold it (round robin; Ray's SPREAD strategy left
        two actors on one node of two), or wherever Ray finds room if that node cannot."""
        strategy: Any = "DEFAULT"
        if self._nodes:
            strategy = NodeAffinitySchedulingStrategy(self._nodes[slot % len(self._nodes)], soft=True)
        cls = ray.remote(_AttackWorker).options(num_gpus=self.num_gpus, num_cpus=self.num_cpus, max_restarts=0,
                                                scheduling_strategy=strategy)
        return cls.remote(self.threads)

    def submit(self, job: Job, observation, truth) -> None:
        try:
            self._start()
            stored = ray.put(observation)  # once: a retry reuses it; no truth goes to the actors
        except Exception as exc:  # noqa: BLE001 - recorded, the federation goes on
            self._failed.append(error_record(job, f"not submitted: {_first_line(exc)}"))
            return
        self._queue.append(_Task(job, stored, truth, special_ids_of(observation.tokenizer)))
        self._dispatch()

    def _dispatch(self) -> None:
        """Send queued jobs to the least-loaded actors while any has room (returns at once)."""
        while self._queue and self._pool:
            loads = [0] * len(self._pool)
            for task in self._running.values():
                loads[task.slot] += 1
            slot = min(range(len(loads)), key=loads.__getitem__)
            if loads[slot] >= self.depth:
                return
            task = self._queue.popleft()
            task.slot, task.actor = slot, _actor_id(self._pool[slot])
            try:
                ref = self._pool[slot].run.remote(task.job, task.observation)
            except Exception as exc:  # noqa: BLE001 - Ray gone (interrupted run): recorded
                self._failed.append(self._error(task, f"not submitted: {_first_line(exc)}"))
                continue
            self._running[ref] = task

    def poll(self, timeout: float = 0.0) -> list[dict]:
        records: list[dict] = []
        if self._running:
            try:
                ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=timeout)
            except Exception:  # noqa: BLE001 - Ray already shut down (interrupted run): drain records the rest
                ready = []
            records = [record for record in map(self._collect, ready) if record is not None]
            self._dispatch()  # freed actors take the next jobs, retries first
        failed, self._failed = self._failed, []
        return _order(failed + records)

    def drain(self, timeout: float = 0.0, reason: str = "cancelled") -> list[dict]:
        """Wait at most ``timeout`` seconds for the outstanding jobs; the rest become errors saying ``reason``."""
        records = self.poll(timeout=max(0.0, timeout))
        records += [self._error(task, reason) for task in [*self._running.values(), *self._queue]]
        self._running.clear()
        self._queue.clear()
        self.close()
        return _order(records)

    def close(self) -> None:
        for actor in self._pool:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - Ray may already be gone
                pass
        self._pool = []

    def _collect(self, ref) -> dict | None:
        """The record of a finished call, scored here; None when its actor died and the job went back in the queue."""
        task = self._running.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:  # the actor process died: another one may do the job
            self._replace(task)
            if task.retried is None:
                task.retried = f"actor {task.actor} died: {_first_line(exc)}"
                self._queue.appendleft(task)
                return None
            return self._error(task, f"actor died: {_first_line(exc)} (retried once: {task.retried})")
        except Exception as exc:  # noqa: BLE001 - Ray failed: still a record
            return self._error(task, _first_line(exc))
        record = score_result(result, task.truth, task.special)  # here, in the server process
        return {**record, "retried": task.retried} if task.retried else record

    def _replace(self, task: _Task) -> None:
        """A fresh actor in the dead one's slot (once, however many of its jobs report the death)."""
        if task.slot is not None and _actor_id(self._pool[task.slot]) == task.actor:
            try:
                self._pool[task.slot] = self._new_actor(task.slot)
            except Exception:  # noqa: BLE001 - Ray gone: the jobs left become errors
                pass

    def _error(self, task: _Task, message: str) -> dict:
        record = {**error_record(task.job, message), "actor": task.actor}
        return {**record, "retried": task.retried} if task.retried else record


def spread_nodes(nodes: list[dict[str, Any]], gpus_per_actor: float) -> list[str]:
    """The ids of the live nodes (``ray.nodes()``) that can hold an attack actor: those with that many GPUs."""
    return sorted(n["NodeID"] for n in nodes
                  if n.get("Alive") and n.get("Resources") and n["Resources"].get("GPU", 0.0) >= gpus_per_actor)


def auto_actors(gpus_per_actor: float, free_gpus: float) -> int:
    """``--attack-actors 0``: one actor per free GPU of the cluster (as many as fit), else one."""
    return max(1, int(free_gpus // gpus_per_actor)) if gpus_per_actor > 0 else 1


def make_attacker(backend: str, gpus: str = "auto", threads: int = 0, actors: int = 0, address: str = "") -> Attacker:
    """The attacker the settings name: ``inline``, or a pool of ``actors`` Ray actors (0: auto, see RayAttacker)."""
    if backend == "inline":
        return InlineAttacker(threads)
    return RayAttacker(actors=actors, num_gpus=gpus, num_cpus=0.0, threads=threads, address=address)
