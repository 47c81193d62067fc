"""Where reconstruction jobs run: a Ray actor next to the federation (GPU when visible), or inline.

A job is attack, then score, in two places. The actor (or the inline attacker) runs :func:`attack_job`: it gets
the job and the :class:`~adversary.case.Observation` only, and returns the :class:`~adversary.case.Reconstruction`
with timing and device facts. The GroundTruth never leaves the server process: the attacker keeps it beside the
job at submission, and :func:`score_result` scores the returned reconstruction there when it is collected
(``poll``/``drain``), with the special-token ids of the server's tokenizer. A job that raises becomes a record
with ``error``: the federation never stops for it.

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
from dataclasses import dataclass
from typing import Any, Collection, Protocol

import ray
import torch

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
            "reconstruction": None, "error": message, "seconds": None}


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
        self._done.append(score_result(result, truth, special))

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

    def run(self, job: Job, observation) -> dict[str, Any]:
        """Attack only (:func:`attack_job`); the ground truth never comes here."""
        if self.device == "cpu":
            return {**attack_job(job, observation), "device": "cpu"}
        result = attack_job(job, _to(observation, self.device))
        if "error" not in result:
            return {**result, "device": self.device}
        # An attack that cannot run on the GPU (tensors made on the CPU) still gets its answer, on the CPU,
        # within what is left of its time budget (at least a second, to answer at all).
        if job.seconds is not None:
            job = dataclasses.replace(job, seconds=max(job.seconds - result["seconds"], 1.0))
        retry = attack_job(job, _to(observation, "cpu"))
        return {**retry, "device": "cpu", "gpu_error": result["error"]}

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


def resolve_gpus(spec: str | float | int) -> float:
    """``auto``: one GPU when CUDA is visible here, else none (Ray schedules nothing that asks for a missing GPU)."""
    if str(spec).strip().lower() == "auto":
        return 1.0 if torch.cuda.is_available() else 0.0
    return float(spec)


class RayAttacker:
    """One Ray actor, created at the first job (by then the simulation backend has initialised Ray)."""

    def __init__(self, num_gpus: float = 0.0, num_cpus: float = 0.0, threads: int = 0) -> None:
        self.num_gpus, self.num_cpus, self.threads = num_gpus, num_cpus, threads
        self._actor = None
        self._pending: dict[Any, Job] = {}
        self._truths: dict[Any, tuple[Any, frozenset[int]]] = {}  # per job: (truth, special ids), kept here
        self._failed: list[dict] = []  # jobs that could not even be submitted

    @property
    def started(self) -> bool:
        return self._actor is not None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _get_actor(self):
        if self._actor is None:
            if not ray.is_initialized():  # a ServerApp run without the Ray simulation backend
                ray.init(include_dashboard=False, log_to_driver=False)
            cls = ray.remote(_AttackWorker)
            self._actor = cls.options(num_gpus=self.num_gpus, num_cpus=self.num_cpus).remote(self.threads)
        elif not ray.is_initialized():  # the simulation has shut Ray down (interrupted): do not start another
            raise RuntimeError("Ray is no longer running")
        return self._actor

    def submit(self, job: Job, observation, truth) -> None:
        try:
            ref = self._get_actor().run.remote(job, observation)  # returns at once; no truth goes to the actor
        except Exception as exc:  # noqa: BLE001 - recorded, the federation goes on
            self._failed.append(error_record(job, f"not submitted: {type(exc).__name__}: {exc}"))
            return
        self._pending[ref] = job
        self._truths[ref] = (truth, special_ids_of(observation.tokenizer))

    def poll(self, timeout: float = 0.0) -> list[dict]:
        failed, self._failed = self._failed, []
        if not self._pending:
            return failed
        try:
            ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=timeout)
        except Exception:  # noqa: BLE001 - Ray already shut down (interrupted run): drain records the rest
            return failed
        return _order(failed + [self._collect(ref) for ref in ready])

    def drain(self, timeout: float = 0.0, reason: str = "cancelled") -> list[dict]:
        """Wait at most ``timeout`` seconds for the outstanding jobs; the rest become errors saying ``reason``."""
        records = self.poll(timeout=max(0.0, timeout))
        for ref, job in list(self._pending.items()):
            records.append(error_record(job, reason))
            del self._pending[ref]
            self._truths.pop(ref, None)
        self.close()
        return _order(records)

    def close(self) -> None:
        if self._actor is not None:
            try:
                ray.kill(self._actor)
            except Exception:  # noqa: BLE001 - Ray may already be gone
                pass
            self._actor = None

    def _collect(self, ref) -> dict:
        job = self._pending.pop(ref)
        truth, special = self._truths.pop(ref, (None, None))
        try:
            result = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the actor died, or Ray failed: still a record
            return error_record(job, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return score_result(result, truth, special)  # here, in the server process


def make_attacker(backend: str, gpus: str = "auto", threads: int = 0) -> Attacker:
    if backend == "inline":
        return InlineAttacker(threads)
    return RayAttacker(num_gpus=resolve_gpus(gpus), num_cpus=0.0, threads=threads)
