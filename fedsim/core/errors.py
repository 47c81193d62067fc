"""One exception type for bad user input, so the CLI can turn it into one line and exit code 2."""


class UsageError(ValueError):
    """Bad input from the user: an unknown name, a malformed spec, a missing file, an impossible size.

    The message must name the bad value and what is accepted; the CLI prints it as one line.
    """


def require_positive(name: str, value: int | float) -> None:
    """Reject zero or negative sizes with a message naming the option."""
    if value is None or value <= 0:
        raise UsageError(f"{name} must be positive, got {value!r}")


def parse_spec(spec: str, what: str, accepted: str) -> tuple[str, str | None]:
    """Split ``KIND:VALUE`` specs (``normal:0.02``, ``dirichlet:0.5``); VALUE may be absent."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"empty {what}; accepted: {accepted}")
    kind, sep, value = spec.strip().partition(":")
    return kind.lower(), (value if sep else None)


def parse_float(text: str | None, what: str, spec: str, accepted: str) -> float:
    """A float inside a spec, with the spec named in the error."""
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"bad {what} {spec!r}: expected a number; accepted: {accepted}") from None
