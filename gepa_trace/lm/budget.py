"""One budget shared by everything an optimization command spends.

Limits: rollouts, LLM calls, tokens, dollars and wall time. Counted limits (rollouts,
LLM calls) are reserved *before* the work starts, under a lock, so concurrent workers
can never overshoot them. Tokens and dollars are only known after a call returns, so
they are checked before each new call.

A rollout's own LLM calls (the user's agent calling its model) are not metered as they
happen; the rollout reports them when it ends (``settle_rollout``). So that rollouts in
flight cannot carry the command past a limit, each one holds, from its start until it
settles, as much as the costliest rollout seen so far (calls, tokens, dollars; the
preflight's rollout gives the first measure): a rollout starts only if it fits with
those already in flight.

``hold_back(share)`` keeps that share of every limit but rollouts for later (the
held-out test): until ``release_held_back()``, the search sees only the rest.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from gepa_trace.errors import BudgetExhausted, ConfigError


@dataclass
class Spent:
    """A snapshot of what has been spent."""

    rollouts: int = 0
    llm_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    llm_calls_by_role: dict[str, int] = field(default_factory=dict)


class Budget:
    """Thread-safe limits for one run. ``None`` means unlimited.

    ``start_rollout()`` / ``start_llm_call()`` reserve one unit or raise
    ``BudgetExhausted``; ``record_llm_call()`` adds the tokens and dollars a call cost.
    ``exhausted()`` names the first limit reached, or returns None.
    """

    def __init__(self, max_rollouts: int | None = None, max_llm_calls: int | None = None,
                 max_tokens: int | None = None, max_cost_usd: float | None = None,
                 max_seconds: float | None = None):
        for name, value in (("max_rollouts", max_rollouts), ("max_llm_calls", max_llm_calls),
                            ("max_tokens", max_tokens), ("max_cost_usd", max_cost_usd),
                            ("max_seconds", max_seconds)):
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(f"Budget {name} must be a non-negative number, got {value!r}")
        self.max_rollouts = max_rollouts
        self.max_llm_calls = max_llm_calls
        self.max_tokens = max_tokens
        self.max_cost_usd = max_cost_usd
        self.max_seconds = max_seconds
        self._lock = threading.Lock()
        self._spent = Spent()
        self._started = time.monotonic()
        self._offset_s = 0.0
        self._in_flight = 0  # rollouts started, not yet settled
        self._per_rollout = Spent()  # the costliest rollout's own calls, tokens, dollars
        self._measured = False  # whether any rollout has settled with what it cost
        self._settled = threading.Condition(self._lock)
        self._calls_in_flight = 0  # metered LLM calls sent, not yet recorded
        self._per_call = Spent()  # the costliest metered call's tokens and dollars
        self._held_back = 0.0

    def __repr__(self) -> str:
        limits = {k: v for k, v in self.limits().items() if v is not None}
        return f"Budget({', '.join(f'{k}={v}' for k, v in limits.items())})"

    def limits(self) -> dict[str, float | None]:
        return {"max_rollouts": self.max_rollouts, "max_llm_calls": self.max_llm_calls,
                "max_tokens": self.max_tokens, "max_cost_usd": self.max_cost_usd,
                "max_seconds": self.max_seconds}

    def restore(self, spent: Spent) -> None:
        """Carry over what an earlier process of the same run spent (resume)."""
        with self._lock:
            self._spent = Spent(spent.rollouts, spent.llm_calls, spent.tokens, spent.cost_usd,
                                0.0, dict(spent.llm_calls_by_role))
            self._offset_s = spent.seconds

    def elapsed(self) -> float:
        return self._offset_s + time.monotonic() - self._started

    def _spend_reason_locked(self, starting: int = 0, calls_starting: int = 0) -> str | None:
        """The first spend limit that what is spent, plus what the rollouts and metered
        calls in flight (and ``starting`` / ``calls_starting`` more) may still spend,
        reaches; None while all fit."""
        s, each, call = self._spent, self._per_rollout, self._per_call
        held = self._in_flight + starting
        calls = self._calls_in_flight + calls_starting
        share = 1.0 - self._held_back
        kept = " of the search's share" if self._held_back else ""
        for name, used, per, per_call in (
                ("max_llm_calls", s.llm_calls, each.llm_calls, 0),
                ("max_tokens", s.tokens, each.tokens, call.tokens),
                ("max_cost_usd", s.cost_usd, each.cost_usd, call.cost_usd)):
            limit = getattr(self, name)
            if limit is None:
                continue
            if used + held * per + calls * per_call >= limit * share:
                note = (f" (counting {held} rollout{'s' if held != 1 else ''} in flight)"
                        if held else "")
                return f"{name}={limit} reached{kept}{note}"
        if self.max_seconds is not None and self.elapsed() >= self.max_seconds * share:
            return f"max_seconds={self.max_seconds} reached{kept}"
        return None

    def _reason_locked(self) -> str | None:
        if self.max_rollouts is not None and self._spent.rollouts >= self.max_rollouts:
            return f"max_rollouts={self.max_rollouts} reached"
        return self._spend_reason_locked()

    def exhausted(self) -> str | None:
        """The first limit reached, as a sentence, or None while there is budget left."""
        with self._lock:
            return self._reason_locked()

    def remaining_rollouts(self) -> int | None:
        with self._lock:
            if self.max_rollouts is None:
                return None
            return max(0, self.max_rollouts - self._spent.rollouts)

    def start_rollout(self, *, counted: bool = True) -> None:
        """Reserve one rollout (``counted=False``: one outside ``max_rollouts``, e.g. of
        the held-out test) or raise BudgetExhausted: also when it would not fit, at
        the costliest rollout seen so far, beside those already in flight. Every
        started rollout is settled with ``settle_rollout``."""
        with self._lock:
            if counted and self.max_rollouts is not None \
                    and self._spent.rollouts >= self.max_rollouts:
                raise BudgetExhausted(f"max_rollouts={self.max_rollouts} reached")
            # With a spend limit and no measure of a rollout yet, one rollout runs
            # alone first: what it costs is the measure of the rest.
            while (not self._measured and self._in_flight and self._spend_limited()):
                self._settled.wait(1.0)
            reason = self._spend_reason_locked(starting=1)
            if reason:
                raise BudgetExhausted(reason)
            if counted:
                self._spent.rollouts += 1
            self._in_flight += 1

    def _spend_limited(self) -> bool:
        return any(v is not None for v in (self.max_llm_calls, self.max_tokens,
                                           self.max_cost_usd))

    def settle_rollout(self, llm_calls: int = 0, tokens: int = 0, cost_usd: float = 0.0,
                       *, started: bool = True, measured: bool = True,
                       role: str = "task") -> None:
        """Add what a rollout's own (unmetered) LLM calls cost, and end its hold on the
        budget (``started=False``: a rollout made outside ``start_rollout``, such as
        the preflight's; ``measured=False``: one that ended without saying what it
        cost). It also becomes the measure of the next rollouts if it is the costliest
        so far."""
        with self._lock:
            s, each = self._spent, self._per_rollout
            if started:
                self._in_flight = max(0, self._in_flight - 1)
            self._measured = self._measured or measured
            self._settled.notify_all()
            if llm_calls:
                s.llm_calls += int(llm_calls)
                s.llm_calls_by_role[role] = s.llm_calls_by_role.get(role, 0) + int(llm_calls)
            s.tokens += int(tokens)
            s.cost_usd += float(cost_usd)
            each.llm_calls = max(each.llm_calls, int(llm_calls))
            each.tokens = max(each.tokens, int(tokens))
            each.cost_usd = max(each.cost_usd, float(cost_usd))

    def shortfall(self, rollouts: int) -> str | None:
        """Why ``rollouts`` more rollouts (outside ``max_rollouts``), each as costly as
        the costliest so far, would not fit now; None when they would."""
        with self._lock:
            return self._spend_reason_locked(starting=rollouts)

    def end_rollouts(self) -> None:
        """Forget rollouts started and never settled (a phase that ended with some
        abandoned), so they hold nothing in the next phase."""
        with self._lock:
            self._in_flight = 0
            self._settled.notify_all()

    def hold_back(self, share: float) -> None:
        """Keep ``share`` (0..1) of every limit but rollouts for a later phase."""
        if not 0.0 <= share < 1.0:
            raise ConfigError(f"the share held back must be in [0, 1), got {share!r}")
        with self._lock:
            self._held_back = float(share)

    def release_held_back(self) -> None:
        with self._lock:
            self._held_back = 0.0

    def start_llm_call(self, role: str = "task") -> None:
        """Reserve one LLM call or raise BudgetExhausted (checked before the call is sent,
        counting what the rollouts in flight may still spend)."""
        with self._lock:
            s = self._spent
            # with a token or dollar limit, the first call goes alone: its cost is the
            # measure that calls sent together hold until they are recorded
            while (self._calls_in_flight and not self._per_call.cost_usd
                   and not self._per_call.tokens
                   and (self.max_tokens is not None or self.max_cost_usd is not None)):
                self._settled.wait(1.0)
            reason = self._spend_reason_locked(calls_starting=1)
            if reason:
                raise BudgetExhausted(reason)
            s.llm_calls += 1
            s.llm_calls_by_role[role] = s.llm_calls_by_role.get(role, 0) + 1
            self._calls_in_flight += 1

    def record_llm_call(self, tokens: int = 0, cost_usd: float = 0.0) -> None:
        """Add what a finished call cost, ending its hold (after ``start_llm_call``; a
        call that failed is recorded with nothing spent)."""
        with self._lock:
            self._spent.tokens += int(tokens)
            self._spent.cost_usd += float(cost_usd)
            self._calls_in_flight = max(0, self._calls_in_flight - 1)
            self._per_call.tokens = max(self._per_call.tokens, int(tokens))
            self._per_call.cost_usd = max(self._per_call.cost_usd, float(cost_usd))
            self._settled.notify_all()

    def add_spent(self, llm_calls_by_role: dict[str, int], tokens: int = 0,
                  cost_usd: float = 0.0) -> None:
        """Add calls metered elsewhere (another process of the run) after the fact."""
        with self._lock:
            s = self._spent
            for role, n in llm_calls_by_role.items():
                s.llm_calls += int(n)
                s.llm_calls_by_role[role] = s.llm_calls_by_role.get(role, 0) + int(n)
            s.tokens += int(tokens)
            s.cost_usd += float(cost_usd)

    def spent(self) -> Spent:
        with self._lock:
            s = self._spent
            return Spent(s.rollouts, s.llm_calls, s.tokens, s.cost_usd, self.elapsed(),
                         dict(s.llm_calls_by_role))
