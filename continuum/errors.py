"""The typed error family.

Adapters raise these (chained with ``raise ... from e``) so the reconciler can decide
without knowing the backend: a :class:`TransientError` is retried after
``retry_after`` seconds, a :class:`PermanentError` fails the run, an
:class:`AuthError` marks the site Unreachable with a credentials reason, an
:class:`UnsupportedError` says the backend cannot do what was asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ContinuumError(Exception):
    """Base of every error Continuum raises on purpose."""


@dataclass
class Problem:
    """One thing wrong with a submitted document.

    Attributes:
        loc: path to the offending field, e.g. ``["spec", "tasks", 2, "dependsOn"]``.
        msg: what is wrong and how to fix it, in one sentence.
        type: a stable machine-readable code, e.g. ``dependency_cycle``.
    """

    loc: list[str | int]
    msg: str
    type: str

    def as_dict(self) -> dict[str, object]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}


class ValidationFailed(ContinuumError):
    """A document was well-formed but not acceptable; carries every :class:`Problem`."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems))


class NotFound(ContinuumError):
    """The named object does not exist."""


class Conflict(ContinuumError):
    """The request conflicts with the object's current state."""


@dataclass
class AdapterError(ContinuumError):
    """A backend call failed. ``site`` names the site; ``message`` says what and how to fix."""

    message: str
    site: str = ""
    details: dict[str, object] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"site {self.site!r}: {self.message}" if self.site else self.message


@dataclass
class TransientError(AdapterError):
    """Worth retrying after ``retry_after`` seconds (network blip, 5xx, broker down)."""

    retry_after: float = 5.0


class PermanentError(AdapterError):
    """Retrying the same call will fail the same way (bad spec, rejected job)."""


class UnsupportedError(AdapterError):
    """The backend cannot do this at all (e.g. a container image on a process-only device)."""


class AuthError(AdapterError):
    """The backend rejected the credentials (wrong token, expired key, missing permission)."""
