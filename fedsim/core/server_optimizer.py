"""``--server-optimizer``: how the server applies the clients' mean update (the spec; the strategies that run it
are in ``fedsim.strategies.base``)."""

from __future__ import annotations

from fedsim.core.errors import UsageError

__all__ = ["SERVER_OPTIMIZERS", "parse_server_optimizer"]

SERVER_OPTIMIZERS = "fedavg, or fedadam:eta=ETA[,tau=TAU] (server Adam step ETA > 0, its epsilon TAU > 0, default 1e-8)"


def parse_server_optimizer(spec: str) -> tuple[str, dict[str, float]]:
    """``fedavg`` or ``fedadam:eta=3e-4[,tau=1e-8]`` as (name, parameters); a bad spec is a UsageError."""
    name, _, rest = str(spec).strip().partition(":")
    if name == "fedavg" and not rest:
        return name, {}
    if name == "fedadam":
        params: dict[str, float] = {"tau": 1e-8}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = float("nan")
            if key.strip() not in ("eta", "tau") or not 0 < number < float("inf"):
                raise UsageError(f"--server-optimizer {spec!r}: bad parameter {item!r}; accepted: {SERVER_OPTIMIZERS}")
            params[key.strip()] = number
        if "eta" in params:
            return name, params
    raise UsageError(f"--server-optimizer {spec!r}: accepted: {SERVER_OPTIMIZERS}")
