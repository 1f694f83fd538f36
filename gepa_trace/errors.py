"""Errors a user can act on. The CLI prints their message as one line.

Exit codes of the CLI (each error class carries its own):

| code | meaning |
|---|---|
| 0 | done |
| 1 | any other error (a bad setting, the store cannot be written, ...) |
| 2 | bad command-line usage (click) |
| 3 | not found: a trace, run, prompt version, or no store at that path |
| 4 | export refused: the held-out gain is not significant |
| 5 | another optimization of the same agent is running (or took this one's lock over) |
| 6 | preflight failed: the entry point, metric or a model does not work |
| 7 | the run stopped because rollouts kept failing; what it had is kept |
| 8 | export or promote refused: the prompt has flagged changes that need review (--approve) |
"""

from __future__ import annotations


class GepaTraceError(Exception):
    """Base of every error gepa-trace raises on purpose."""

    exit_code = 1


class ConfigError(GepaTraceError, ValueError):
    """A setting, argument or URL is invalid."""


class StoreError(GepaTraceError):
    """The store cannot be opened, read or written."""


class StoreUnavailable(StoreError):
    """The store exists but cannot be written now: another writer holds its lock past
    the wait, or the database cannot be reached. Nothing was written; retry later."""


class SchemaTooNewError(StoreError):
    """The database was written by a newer gepa-trace than this one."""


class NotFoundError(GepaTraceError, LookupError):
    """A trace, run, candidate or prompt version that does not exist."""

    exit_code = 3


class StoreMissing(NotFoundError, StoreError):
    """No store at that path (only commands meant to create a store create one)."""


class FeedbackError(GepaTraceError, ValueError):
    """Feedback that cannot be recorded (unknown trace, empty, non-finite score)."""


class LMError(GepaTraceError):
    """An LLM call failed after its retries."""


class MetricContractError(GepaTraceError, ValueError):
    """A metric returned something other than a float or Score in the score range."""


class PreflightFailed(GepaTraceError):
    """Before the loop, the entry point, the metric or a configured model failed on
    one try; the message names the cause."""

    exit_code = 6


class RolloutsFailed(GepaTraceError):
    """The run stopped because rollouts kept failing (after their retries); the
    message carries the first error. What the run had is kept and it can resume."""

    exit_code = 7


class BudgetExhausted(GepaTraceError):
    """The run's budget is spent; no new LLM call or rollout may start."""


class MissingDependency(GepaTraceError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


class GateRefused(GepaTraceError):
    """Export refused: the held-out gain is not significant."""

    exit_code = 4


class ReviewRequired(GepaTraceError):
    """Export or promote refused: the prompt has changes the review flagged (a new URL,
    an instruction copied from a few users' traces, ...) and no one approved them."""

    exit_code = 8


class LockHeld(GepaTraceError):
    """Another optimization of the same agent is running."""

    exit_code = 5


class LockLost(LockHeld):
    """This run's lock was taken over by another run of the same agent; it stopped at
    a safe point, kept what it recorded, and can be resumed."""
