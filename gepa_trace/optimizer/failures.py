"""Errors are not scores: what the optimizer does with a rollout that failed.

A rollout *failed* when the evaluator raised, or returned a ``Rollout`` with ``error``
set (the agent raised, the metric raised or broke its contract), or its score is
outside ``[min_score, perfect_score]``. The policy:

- **Retried.** A failed rollout is run again, up to ``OptimizerConfig.rollout_retries``
  more times (2 by default), on the same rollout of the budget: retries are attempts of
  one rollout, as an LLM client's retries are attempts of one call, so a transient error
  that a retry heals gives the same run as no error. No retry when the failure will
  repeat (``is_permanent``): an authentication, permission or not-found error (HTTP
  401/403/404 anywhere in the exception's chain, or litellm's classes of them), and a
  metric that broke its contract. Transient errors by ``lm.retry.is_retryable`` (429,
  5xx, timeouts, broken connections) and any other exception are retried.
- **Never a score.** A rollout still failing after its retries is not stored as an
  evaluation, not cached, not reused on resume and never shown to the reflection LM.
  It is recorded as a ``rollout_failed`` run event (candidate, example, purpose,
  attempts, error, trace id, cost) and counted in ``Totals.evaluator_errors``.
- **No decision without it.** A decision that needs a failed rollout (a minibatch
  verdict and its recorded sums, a validation, a merge's subsample, a parent's
  minibatch the next reflection reads) is not taken: ``BatchEvaluator.collect`` raises
  ``RolloutFailed`` and the run stops there with ``failed_with`` set (run status
  "failed"). Everything recorded before stays; verdicts not yet recorded are not
  recorded, and the run goes back to the start of the window (lookahead) whose
  decision could not be taken: its checkpoint names that iteration and the window's
  children are "proposed" again, so ``--resume`` plans the same window, judges them
  again from the stored rollouts and re-runs only what failed; it ends as the run
  that never failed would have (same candidates, verdicts, scores, best). A minibatch verdict
  fixed by the other rollouts counts the failed one as unknown (between ``min_score``
  and ``perfect_score``), so whether the run stops does not depend on ``workers``.
- **Run-ahead work is not a decision.** A failure in work run on a guess (lookahead,
  an iteration run while a child is validated) that no decision ends up reading does
  not stop the run; if a decision later needs that pair, it is run again then (a new
  rollout of the budget, so near the budget's end such a run may stop a little earlier
  than one without the failure).
- **Budget.** A failed rollout took its rollout of the budget in the process that ran
  it; a resumed run counts only stored evaluations as rollouts spent (so it ends as
  the run that never failed), while the tokens and dollars of failed attempts stay
  spent and their task calls stay counted (``Totals.failed_rollout_llm_calls``).
- **A store that stays busy** (``persistence.write_retrying`` gave up) turns the
  rollout whose evaluation could not be saved into a failure, with that error.

``BudgetExhausted`` is not a failure: it stops the batch as before (``BatchStopped``).
"""

from __future__ import annotations

import traceback

from gepa_trace.errors import MetricContractError
from gepa_trace.lm.retry import is_retryable, status_of
from gepa_trace.optimizer.protocols import Rollout
from gepa_trace.optimizer.state import Candidate, RunState

#: HTTP statuses that fail the same way on every try: never retried.
PERMANENT_STATUS = frozenset({401, 403, 404})
# litellm's (and openai's) classes for those statuses, for exceptions that lost the code
_PERMANENT_NAMES = frozenset({"AuthenticationError", "PermissionDeniedError",
                              "NotFoundError"})


class RolloutFailed(Exception):
    """A decision needs a rollout that still failed after its retries.

    ``message`` reads ``candidate 3 on example ab12: RuntimeError: task model down``.
    """

    def __init__(self, candidate_id: int, example_id: str, error: str):
        self.candidate_id = candidate_id
        self.example_id = example_id
        self.error = error
        self.message = f"candidate {candidate_id} on example {example_id}: {error}"
        super().__init__(self.message)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``/``__context__``)."""
    seen: list[BaseException] = []
    while exc is not None and all(exc is not s for s in seen) and len(seen) < 16:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def is_permanent(exc: BaseException) -> bool:
    """Whether retrying the rollout that raised ``exc`` would fail the same way: an
    auth, permission or not-found error anywhere in its chain, or a metric contract
    error. A transient failure (``lm.retry.is_retryable``) found first is not."""
    for link in _chain(exc):
        # ``processes.RemoteError``: judged in the worker process, where the type was known
        if isinstance(link, MetricContractError) or getattr(link, "permanent", None) is True:
            return True
        if is_retryable(link):
            return False
        status = status_of(link)
        if status in PERMANENT_STATUS or (status is None
                                          and type(link).__name__ in _PERMANENT_NAMES):
            return True
    return False


def describe(exc: BaseException) -> str:
    """``ExceptionType: message`` on one line (no traceback)."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def failed_rollout(exc: BaseException, context: str = "") -> Rollout:
    """The failed rollout for an exception: its description (prefixed by ``context``,
    e.g. "the agent raised") as the error, no feedback, and whether a retry can help.
    Its score is 0 and means nothing: the optimizer never reads it."""
    detail = describe(exc)
    return Rollout(score=0.0, feedback="", error=f"{context} {detail}".strip(),
                   permanent=is_permanent(exc))


def out_of_range(rollout: Rollout, low: float, high: float) -> Rollout:
    """The rollout, or a failed copy of it when its score is not a finite number within
    [low, high] (a permanent failure: the same metric would score it so again)."""
    score = rollout.score
    try:
        ok = low <= float(score) <= high
    except (TypeError, ValueError):
        ok = False
    if ok:
        return rollout
    error = (f"the score {score!r} is outside the score range [{low:g}, {high:g}] "
             f"(OptimizerConfig.min_score, perfect_score)")
    return Rollout(score=0.0, feedback="", output=rollout.output, error=error,
                   trace_id=rollout.trace_id, llm_calls=rollout.llm_calls,
                   cache_hits=rollout.cache_hits, tokens=rollout.tokens,
                   cost_usd=rollout.cost_usd, permanent=True, attempts=rollout.attempts)


def retry_pause_s(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based) of a failed rollout:
    short, since the LLM client already backs off on rate limits and outages."""
    return min(2.0, 0.05 * 2 ** (attempt - 1))


def reopen_window(state: RunState, start: int,
                  superseded: list[Candidate]) -> list[Candidate]:
    """Make the children of the windows from iteration ``start`` on unjudged again, as
    a run stopped by a failure goes back there: judged but not in the pool (a verdict
    a resumed run takes again, the same, from the stored rollouts), or in
    ``superseded`` (superseded by a child accepted in those windows). Their status
    becomes "proposed" so the resumed run finds and reuses them, with their ids, where
    its plan meets them. Returns the children changed (to be saved)."""
    again = {c.id for c in superseded if c.status == "superseded"}
    changed = []
    for child in state.candidates:
        if child.iteration < start or child.origin not in ("reflection", "merge"):
            continue
        judged = child.status in ("accepted", "rejected") and child.id not in state.pool
        if judged or child.id in again:
            child.status, child.reason = "proposed", None
            changed.append(child)
    return changed
