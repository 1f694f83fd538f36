"""One budget shared by everything in an optimization run.

Limits: rollouts, LLM calls, tokens, dollars and wall time. Counted limits (rollouts,
LLM calls) are reserved *before* the work starts, under a lock, so concurrent workers
can never overshoot them. Tokens and dollars are only known after a call returns, so
they are checked before each new call: they can be exceeded by at most the calls
already in flight when the limit was crossed.
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

    def _reason_locked(self) -> str | None:
        s = self._spent
        if self.max_rollouts is not None and s.rollouts >= self.max_rollouts:
            return f"max_rollouts={self.max_rollouts} reached"
        if self.max_llm_calls is not None and s.llm_calls >= self.max_llm_calls:
            return f"max_llm_calls={self.max_llm_calls} reached"
        if self.max_tokens is not None and s.tokens >= self.max_tokens:
            return f"max_tokens={self.max_tokens} reached"
        if self.max_cost_usd is not None and s.cost_usd >= self.max_cost_usd:
            return f"max_cost_usd={self.max_cost_usd} reached"
        if self.max_seconds is not None and self.elapsed() >= self.max_seconds:
            return f"max_seconds={self.max_seconds} reached"
        return None

    def exhausted(self) -> str | None:
        """The first limit reached, as a sentence, or None while there is budget left."""
        with self._lock:
            return self._reason_locked()

    def remaining_rollouts(self) -> int | None:
        with self._lock:
            if self.max_rollouts is None:
                return None
            return max(0, self.max_rollouts - self._spent.rollouts)

    def start_rollout(self) -> None:
        """Reserve one rollout or raise BudgetExhausted."""
        with self._lock:
            reason = self._reason_locked()
            if reason:
                raise BudgetExhausted(reason)
            self._spent.rollouts += 1

    def start_llm_call(self, role: str = "task") -> None:
        """Reserve one LLM call or raise BudgetExhausted (checked before the call is sent)."""
        with self._lock:
            s = self._spent
            if self.max_llm_calls is not None and s.llm_calls >= self.max_llm_calls:
                raise BudgetExhausted(f"max_llm_calls={self.max_llm_calls} reached")
            if self.max_tokens is not None and s.tokens >= self.max_tokens:
                raise BudgetExhausted(f"max_tokens={self.max_tokens} reached")
            if self.max_cost_usd is not None and s.cost_usd >= self.max_cost_usd:
                raise BudgetExhausted(f"max_cost_usd={self.max_cost_usd} reached")
            if self.max_seconds is not None and self.elapsed() >= self.max_seconds:
                raise BudgetExhausted(f"max_seconds={self.max_seconds} reached")
            s.llm_calls += 1
            s.llm_calls_by_role[role] = s.llm_calls_by_role.get(role, 0) + 1

    def record_llm_call(self, tokens: int = 0, cost_usd: float = 0.0) -> None:
        """Add what a finished call cost (after ``start_llm_call``)."""
        with self._lock:
            self._spent.tokens += int(tokens)
            self._spent.cost_usd += float(cost_usd)

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
