"""The run's settings: one dataclass, the single source of every option's name, type and default.

Settings travel as Flower ``run_config`` (kebab-case keys, ``flwr run .``) or as a ``Settings`` object (``fedleak
simulate``); the server forwards the part a client needs in each train message, so clients never depend on
``run_config`` (which ``run_simulation`` leaves empty).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from adversary.registry import available
from defenses import parse_defenses
from fedsim.core.errors import UsageError

MODES = ("fedsgd", "fedavg")


@dataclass
class Settings:
    """One federation run. Field names are the CLI options and, with ``-`` for ``_``, the run_config keys."""

    model: str = "tinybert4"
    init: str = "normal:0.02"
    vocab: str = "bert-base-uncased"
    max_length: int = 64
    dataset: str = "pii"
    data_dir: str = ""
    clients: int = 2
    rounds: int = 3
    mode: str = "fedsgd"
    batch_size: int = 1
    local_steps: int = 1
    lr: float = 0.02
    partition: str = "iid"
    attack: str = "tag"
    attack_iterations: int = 150
    attack_clients: str = "all"  # "all" or K: attack K clients per round, drawn with the seed
    attack_backend: str = "ray"  # "ray": a Ray actor (GPU when visible); "inline": in the server thread (tests, debugging)
    attack_gpus: str = "auto"  # "auto": 1 when CUDA is visible, else 0; or a number
    attack_threads: int = 0  # torch threads for the attack; 0 = all cores but one
    attack_timeout: float = 600.0  # seconds to wait for outstanding attack jobs after the last round
    defense: list[str] = field(default_factory=list)  # client-side defenses, applied in order; empty = none
    eval_examples: int = 0  # 0 = the whole dev split
    seed: int = 0
    out: str = "runs/simulate"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; accepted: {', '.join(MODES)}")
        if self.attack != "none":
            if self.attack not in available():
                raise UsageError(f"unknown attack {self.attack!r}; accepted: none, {', '.join(available())}")
        if self.defense:
            parse_defenses(self.defense)  # a malformed spec fails here, not inside a client
        for name in ("clients", "rounds", "batch_size", "local_steps", "attack_iterations", "max_length"):
            if int(getattr(self, name)) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr!r}")
        self.attack_clients_count()  # raises on a bad value
        if self.attack_backend not in ("ray", "inline"):
            raise UsageError(f"unknown attack backend {self.attack_backend!r}; accepted: ray, inline")

    def attack_clients_count(self) -> int | None:
        """None for ``all``, else K > 0."""
        text = str(self.attack_clients).strip().lower()
        if text == "all":
            return None
        try:
            k = int(text)
        except ValueError:
            k = 0
        if k <= 0:
            raise UsageError(f"--attack-clients must be 'all' or a positive integer, got {self.attack_clients!r}")
        return k

    @property
    def gradient_scale(self) -> float:
        """Weight delta / this = the (averaged) gradient: lr for FedSGD, lr * E for FedAvg."""
        return self.lr * (self.local_steps if self.mode == "fedavg" else 1)

    @property
    def examples_per_update(self) -> int:
        return self.batch_size * (self.local_steps if self.mode == "fedavg" else 1)

    # --- Flower run_config <-> Settings -------------------------------------------------------------------------
    def to_run_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): ("+".join(v) if isinstance(v, list) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> "Settings":
        """Settings from ``context.run_config``: unknown keys are rejected, missing ones take the defaults."""
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in types:
                raise UsageError(f"unknown run_config key {key!r}; accepted: {', '.join(sorted(cls().to_run_config()))}")
            default = getattr(cls, name, None)
            if name == "defense":
                value = defense_list(value)
            elif isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            else:
                value = str(value)
            values[name] = value
        return cls(**values)

    def client_config(self) -> dict[str, Any]:
        """What the server sends clients each round (a Flower ConfigRecord): how to train, never what to leak."""
        return {"model": self.model, "vocab": self.vocab, "max-length": self.max_length, "dataset": self.dataset,
                "data-dir": self.data_dir, "partition": self.partition, "seed": self.seed, "mode": self.mode,
                "batch-size": self.batch_size, "local-steps": self.local_steps, "lr": self.lr,
                "defense": "+".join(self.defense)}


def defense_list(value: str | list[str]) -> list[str]:
    """Defense settings from a run_config value: one string, specs composed with ``+`` (commas belong to ``dp:``)."""
    values = [value] if isinstance(value, str) else list(value)
    return [v.strip() for v in values if v.strip() and v.strip() != "none"]
