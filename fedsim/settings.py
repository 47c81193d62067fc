"""The run's settings: one declaration per option, from which everything else is derived.

Each option is a dataclass field declared once, with its type, default, help text and command-line group
(``option(...)``). From those fields come the command-line options of ``fedleak simulate``, ``sweep`` and
``attack`` (``add_options``), the Flower ``run_config`` keys of ``flwr run .`` (field name with ``-`` for ``_``;
``tests/test_settings.py`` checks that ``[tool.flwr.app.config]`` in ``pyproject.toml`` matches the defaults), and
the settings every output file records. ``Settings`` is one federation; ``AttackJob`` one ``fedleak attack`` run;
both share the model, data and run options of ``RunOptions``.

The server forwards the part a client needs in each train message (``client_config``), so clients never depend on
``run_config`` (which ``run_simulation`` leaves empty).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

import numpy as np

from adversary.registry import available
from defenses import parse_defenses
from fedsim.core.data import TASKS, partition
from fedsim.core.errors import UsageError
from fedsim.core.models import MODEL_NAMES, parse_init
from fedsim.core.server_optimizer import parse_server_optimizer

MODES = ("fedsgd", "fedavg")
ATTACK_BACKENDS = ("ray", "inline")
SPLITS = ("train", "dev")
GROUPS = ("model", "data", "federation", "curious server", "attack", "client-side defense", "run")  # --help order


# --- how an option is declared --------------------------------------------------------------------------------------
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def count_or_all(text: str) -> int:
    """A count where 0 means "all" (``--eval-examples``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 (0 = all), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 (0 = all), got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def option(default: Any = MISSING, help: str = "", *, group: str = "run", parse: Callable[[str], Any] | None = None,
           choices: tuple[str, ...] | None = None, repeat: bool = False, flag: str | None = None,
           cli: bool = True, shown: str | None = None, default_factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A settings field with what the command line needs to offer it.

    ``parse``: argparse ``type`` (default: the default's type); ``repeat``: the option may be given several times
    (a list); ``flag``: a command-line name other than ``--field-name``; ``cli=False``: not a command-line option;
    ``shown``: how the default reads in ``--help`` when its value would mislead (``0`` meaning "all").
    """
    meta = {"help": help, "group": group, "parse": parse, "choices": choices, "repeat": repeat, "flag": flag,
            "cli": cli, "shown": shown}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def redefault(cls: type, name: str, default: Any) -> Any:
    """``cls``'s option ``name`` with another default (a subclass's own default, same help and group)."""
    return field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                defaults: Mapping[str, Any] | None = None) -> None:
    """Add one command-line option per ``option`` field of ``cls``, grouped as declared. ``defaults``: a
    command's own defaults for some fields (``sweep``'s ``out``), shown in ``--help`` as such."""
    offered = [f for f in fields(cls) if f.metadata.get("cli", False) and f.name not in skip]
    used = {f.metadata["group"] for f in offered}
    groups = {g: parser.add_argument_group(g) for g in (*GROUPS, *sorted(used - set(GROUPS))) if g in used}
    for f in offered:
        meta = f.metadata
        group = groups[meta["group"]]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        default = (defaults or {}).get(f.name, default)
        shown = meta["shown"] or ("off" if isinstance(default, bool) else "none" if default in ("", None, [])
                                  else f"{default:g}" if isinstance(default, float) else str(default))
        help_text = f"{meta['help']} (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text}
        if isinstance(default, bool):
            # A true default is switched off by the flag (``--private-lengths`` sets ``public_lengths`` false).
            kwargs.update(action="store_false" if default else "store_true", default=default)
        elif meta["repeat"]:
            kwargs.update(action="append", default=[], metavar="SPEC")
        else:
            kwargs.update(default=default, type=meta["parse"] or (type(default) if default is not None else str))
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
        group.add_argument(flag_of(f), **kwargs)


def command_flags(cls: type, values: Mapping[str, Any]) -> str:
    """The command-line options that give ``values`` (field names) in ``cls``: only those that differ from the
    defaults, so that the line a report prints is the shortest one that reruns it."""
    out = []
    for f in fields(cls):
        if not f.metadata.get("cli") or f.name not in values:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        value = values[f.name]
        if f.metadata.get("repeat"):
            value = [v for v in (value.split("+") if isinstance(value, str) else value or []) if v]
            out += [f" {flag_of(f)} {shlex.quote(v)}" for v in value]
        elif isinstance(default, bool):
            if bool(value) != default:
                out.append(f" {flag_of(f)}")
        elif value not in (None, "") and value != default:
            if isinstance(default, int) and isinstance(value, float) and value.is_integer():
                value = int(value)  # a summary's means turn counts into floats
            out.append(f" {flag_of(f)} {shlex.quote(str(value))}")
    return "".join(out)


def from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """``cls`` from parsed options (validated by ``cls`` itself: UsageError, one line, exit 2)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if f.metadata.get("cli") and hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def defense_list(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """Defense settings from an option or run_config value: specs composed with ``+`` (commas belong to ``dp:``);
    ``none`` and empty values dropped."""
    values = [value] if isinstance(value, str) else list(value)
    return [v.strip() for v in values if v.strip() and v.strip() != "none"]


def check_dataset(name: str) -> str:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise UsageError(f"unknown dataset {name!r}; accepted: {', '.join(TASKS)}")
    return key


def check_time_budget(value: Any) -> None:
    """``--attack-time-budget`` must be a finite number of seconds > 0 (an attack's deadline)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UsageError(f"--attack-time-budget must be a positive number of seconds, got {value!r}")


# --- the options ------------------------------------------------------------------------------------------------------
@dataclass
class RunOptions:
    """What every run has: a model, data, a batch size, client-side defenses, a seed and an output directory."""

    model: str = option("tinybert4", f"zoo name ({', '.join(MODEL_NAMES)}), hub id or local directory", group="model")
    init: str = option("normal:0.02", "normal:STD, uniform:RANGE or pretrained", group="model")
    vocab: str = option("bert-base-uncased", "tokenizer vocabulary: bert-base-uncased (offline), bert-base-chinese, "
                        "or a vocab.txt path", group="model")
    max_length: int = option(64, "truncate sequences to this many tokens", group="model", parse=positive_int)
    dataset: str = option("pii", f"{', '.join(TASKS)} (pii: built in, offline)", group="data")
    data_dir: str = option("", "local GLUE directory (CoLA/, SST-2/, RTE/); else FEDLEAK_GLUE_DIR, else the hub",
                           group="data")
    batch_size: int = option(1, "examples per client step (sentences per gradient)", group="data", parse=positive_int)
    defense: list[str] = option(
        help="client-side defense applied before the update leaves the client: noise:sigma=S, clip:c=C, "
             "dp:sigma=S,c=C or prune:p=P (repeatable: applied in order; compose with '+'); or a budget whose sigma "
             "is calibrated to the run: dp:epsilon=E,c=C or clip:c=C+noise:epsilon=E (optional ,delta=D)",
        group="client-side defense", repeat=True, default_factory=list)
    seed: int = option(0, "same seed, same results")
    out: str = option("runs/run", "output directory")

    def validate(self) -> None:
        self.dataset = check_dataset(self.dataset)
        self.data_dir = self.data_dir or ""
        self.defense = defense_list(self.defense)
        parse_defenses(self.defense)  # a malformed spec fails here, not inside a client
        parse_init(self.init)
        for name in ("batch_size", "max_length"):
            if int(getattr(self, name)) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")


@dataclass
class Settings(RunOptions):
    """One federation run (``fedleak simulate``, each run of ``fedleak sweep``, ``flwr run .``).

    The defaults are a federation that learns within a few minutes on two CPU cores (pretrained MiniLM, shipped
    offline, +0.3 to +0.5 dev accuracy on ``pii`` in 12 rounds) while the curious server attacks one client every
    third round with TAG; ``fedleak attack`` keeps the random-init TinyBERT4 of the paper's tables."""

    model: str = redefault(RunOptions, "model", "minilm-l6")
    init: str = redefault(RunOptions, "init", "pretrained")
    batch_size: int = redefault(RunOptions, "batch_size", 2)
    partition: str = option("iid", "iid or dirichlet:ALPHA (label skew)", group="data")
    eval_examples: int = option(0, "evaluate on the first N dev examples (0: all)", group="data", parse=count_or_all,
                                shown="all")
    eval_every: int = option(1, "evaluate the global model on dev every K rounds and after the last (a full dev "
                             "split costs more than a round on small models); rounds in between record no accuracy",
                             group="data", parse=positive_int)
    clients: int = option(2, "clients in the federation", group="federation", parse=positive_int)
    rounds: int = option(12, "federated rounds", group="federation", parse=positive_int)
    mode: str = option("fedsgd", "fedsgd: one step on one batch, the server recovers its gradient exactly; fedavg: "
                       "--local-steps steps, the server sees their averaged gradient", group="federation",
                       choices=MODES)
    local_steps: int = option(1, "E, SGD steps per round (fedavg only)", group="federation", parse=positive_int)
    lr: float = option(0.1, "client SGD learning rate", group="federation", parse=positive_float)
    server_optimizer: str = option("fedavg", "how the server applies the clients' mean update: fedavg (adds it), or "
                                   "fedadam:eta=ETA[,tau=TAU] (Adam on the server, the mean update its "
                                   "pseudo-gradient; clients unchanged)", group="federation")
    secagg: bool = option(False, "run every round under Flower's SecAgg+ secure aggregation: clients send masked, "
                          "quantised updates and the server unmasks only their sum, which the curious server attacks "
                          "as one batch of all the clients' examples", group="federation")
    secagg_clipping_range: float = option(1.0, "SecAgg+: each update value (w_client - w_global) is clipped to "
                                          "this range before quantisation (updates at lr 0.1 stay below ~0.06)",
                                          group="federation", parse=positive_float)
    secagg_quantization_range: int = option(2**22, "SecAgg+: levels over [-range, range] (Flower's default 2^22, a "
                                            "step of 4.8e-7 at range 1); at most 2^30 / --clients",
                                            group="federation", parse=positive_int)
    attack: str = option("tag", "none, dlg, tag, span, lamp or best (none runs no attack code)",
                         group="curious server")
    attack_iterations: int = option(150, "attack iterations per update", group="curious server", parse=positive_int)
    attack_clients: str = option("1", "all, or K clients attacked per round (drawn with the seed)",
                                 group="curious server")
    attack_rounds: str = option("every:3", "all, every:K (rounds 1, 1+K, 1+2K, ...) or a comma list of rounds: which rounds "
                                "the server attacks", group="curious server")
    attack_backend: str = option("ray", "ray: a Ray actor beside the federation, rounds do not wait for it; inline: "
                                 "in the server, blocking (tests, debugging)", group="curious server",
                                 choices=ATTACK_BACKENDS)
    attack_gpus: str = option("auto", "GPUs per attack actor: auto (1 if the Ray cluster has GPUs), 0 or 1",
                              group="curious server")
    attack_actors: int = option(0, "attack actors in the Ray pool; 0 = one per free GPU of the cluster, else 1",
                                group="curious server", shown="auto")
    ray_address: str = option("", "join the Ray cluster at this address (ip:port, as `ray start --head` prints) "
                              "instead of starting a local Ray; default: RAY_ADDRESS, else local",
                              group="curious server")
    attack_threads: int = option(0, "torch threads for the attack; 0 = all cores but one", group="curious server")
    attack_timeout: float = option(600.0, "seconds to wait for unfinished attacks after the last round",
                                   group="curious server", parse=positive_float)
    attack_time_budget: float = option(300.0, "wall-clock seconds one attack job may run; it then answers with the "
                                       "best it has", group="curious server", parse=positive_float)
    out: str = option("runs/simulate", "output directory")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; accepted: {', '.join(MODES)}")
        if self.attack != "none" and self.attack not in available():
            raise UsageError(f"unknown attack {self.attack!r}; accepted: none, {', '.join(available())}")
        for name in ("clients", "rounds", "local_steps", "attack_iterations", "eval_every"):
            if int(getattr(self, name)) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr!r}")
        check_time_budget(self.attack_time_budget)
        self.attack_clients_count()  # raises on a bad value
        self.attacked_rounds()
        if self.attack_backend not in ATTACK_BACKENDS:
            raise UsageError(f"unknown attack backend {self.attack_backend!r}; accepted: {', '.join(ATTACK_BACKENDS)}")
        self.attack_threads = max(0, int(self.attack_threads))
        if not str(self.attack_actors).strip().isdigit():
            raise UsageError(f"--attack-actors must be 0 (auto) or a positive integer, got {self.attack_actors!r}")
        self.attack_actors = int(self.attack_actors)
        self.ray_address = str(self.ray_address or "").strip()
        self.eval_examples = max(0, int(self.eval_examples or 0))
        self.attack_gpus = str(self.attack_gpus)
        if self.attack_gpus.lower() != "auto":
            try:
                if float(self.attack_gpus) < 0:
                    raise ValueError
            except ValueError:
                raise UsageError(f"--attack-gpus must be auto or a number >= 0, got {self.attack_gpus!r}") from None
        partition(np.zeros(2, dtype=int), 1, self.partition)  # a bad spec fails here, not inside a Ray worker
        parse_server_optimizer(self.server_optimizer)
        self.check_secagg()

    def check_secagg(self) -> None:
        """SecAgg+ needs two clients, a finite clipping range and a quantisation range whose sum over all clients
        cannot wrap around Flower's 2^32 modulus (nor its int32 rounding)."""
        if not 0 < float(self.secagg_clipping_range) < float("inf"):
            raise UsageError(f"--secagg-clipping-range must be a positive number, got {self.secagg_clipping_range!r}")
        levels = self.secagg_quantization_range
        most = 2**30 // (self.clients if self.secagg else 1)
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= most:
            raise UsageError(f"--secagg-quantization-range must be an integer from 2 to 2^30 / clients = {most}, "
                             f"got {levels!r}")
        if self.secagg and self.clients < 2:
            raise UsageError(f"--secagg needs at least 2 clients (a sum of one is the update), got --clients "
                             f"{self.clients}")

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

    def attacked_rounds(self) -> frozenset[int] | None:
        """The rounds the server attacks (None: every round) from ``--attack-rounds``."""
        text = str(self.attack_rounds).strip().lower()
        if text == "all":
            return None
        try:
            if text.startswith("every:"):
                k = int(text.split(":", 1)[1])
                chosen = frozenset(range(1, self.rounds + 1, k)) if k > 0 else frozenset()
            else:
                chosen = frozenset(int(r) for r in text.split(","))
        except ValueError:
            chosen = frozenset()
        if not chosen or min(chosen) < 1:
            raise UsageError(f"--attack-rounds must be 'all', 'every:K' (K >= 1) or a comma list of rounds >= 1, "
                             f"got {self.attack_rounds!r}")
        return chosen

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
        defaults = {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
                    for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in defaults:
                raise UsageError(f"unknown run_config key {key!r}; accepted: {', '.join(sorted(cls().to_run_config()))}")
            default = defaults[name]
            if isinstance(default, list):
                value = defense_list(str(value).split("+") if isinstance(value, str) else value)
            elif isinstance(default, bool):
                value = bool(value)
            else:
                value = type(default)(value)
            values[name] = value
        return cls(**values)

    def client_config(self) -> dict[str, Any]:
        """What the server sends clients each round (a Flower ConfigRecord): how to train, never what to leak."""
        return {"model": self.model, "vocab": self.vocab, "max-length": self.max_length, "dataset": self.dataset,
                "data-dir": self.data_dir, "partition": self.partition, "seed": self.seed, "mode": self.mode,
                "batch-size": self.batch_size, "local-steps": self.local_steps, "lr": self.lr,
                "defense": "+".join(self.defense)}


@dataclass
class AttackJob(RunOptions):
    """One ``fedleak attack`` run. ``num_samples`` None: every line of ``text_file``, or 10 dataset examples."""

    split: str = option("train", "dataset split", group="data", choices=SPLITS)
    text_file: str | None = option(None, "attack these sentences (one per line) instead of --dataset; labels drawn "
                                   "from --seed", group="attack")
    num_samples: int | None = option(None, "examples to attack: the first N", group="attack", parse=positive_int,
                                     shown="all lines of --text-file, or 10 examples")
    method: str = option("tag", "dlg, tag, or another registered attack", group="attack")
    iterations: int = option(1000, "optimisation steps", group="attack", parse=positive_int)
    attack_time_budget: float | None = option(None, "wall-clock seconds per batch; the attack then answers with the "
                                              "best it has", group="attack", parse=positive_float,
                                              shown="none: --iterations alone bounds it")
    public_lengths: bool = option(True, "do not give the attacker the sequence lengths: it reads them from the "
                                  "gradient", group="attack", flag="--private-lengths")
    attack_options: dict = option(help="the attack's own options (keyword overrides)", cli=False,
                                  default_factory=dict)
    out: str = option("runs/attack", "output directory")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        super().validate()
        for name in ("iterations", "num_samples"):
            value = getattr(self, name)
            if value is not None and int(value) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value!r}")
        if self.attack_time_budget is not None:
            check_time_budget(self.attack_time_budget)
        if self.text_file is not None and not str(self.text_file).strip():
            raise UsageError("empty --text-file path")
