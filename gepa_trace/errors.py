"""Errors a user can act on. The CLI prints their message as one line."""

from __future__ import annotations


class GepaTraceError(Exception):
    """Base of every error gepa-trace raises on purpose."""

    exit_code = 1


class ConfigError(GepaTraceError, ValueError):
    """A setting, argument or URL is invalid."""


class StoreError(GepaTraceError):
    """The store cannot be opened, read or written."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer gepa-trace than this one."""


class NotFoundError(GepaTraceError, LookupError):
    """A trace, run, candidate or prompt version that does not exist."""

    exit_code = 3


class FeedbackError(GepaTraceError, ValueError):
    """Feedback that cannot be recorded (unknown trace, empty, non-finite score)."""


class LMError(GepaTraceError):
    """An LLM call failed after its retries."""


class BudgetExhausted(GepaTraceError):
    """The run's budget is spent; no new LLM call or rollout may start."""


class MissingDependency(GepaTraceError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


class GateRefused(GepaTraceError):
    """Export refused: the held-out gain is not significant."""

    exit_code = 4


class LockHeld(GepaTraceError):
    """Another optimization of the same agent is running."""

    exit_code = 5
