"""The SQL store: tables, engine, migrations and the queries the rest of the package uses."""

from gepa_trace.store.engine import (
    Store,
    forget_store,
    open_store,
    resolve_url,
    safe_url,
)
from gepa_trace.store.migrations import SCHEMA_VERSION
from gepa_trace.store.tables import (
    CandidateRow,
    EvaluationRow,
    ExampleMarkRow,
    FeedbackRow,
    OptimizationRunRow,
    PromptAliasRow,
    PromptVersionRow,
    RunEventRow,
    RunLockRow,
    SpanRow,
)

__all__ = [
    "SCHEMA_VERSION",
    "CandidateRow",
    "EvaluationRow",
    "ExampleMarkRow",
    "FeedbackRow",
    "OptimizationRunRow",
    "PromptAliasRow",
    "PromptVersionRow",
    "RunEventRow",
    "RunLockRow",
    "SpanRow",
    "Store",
    "forget_store",
    "open_store",
    "resolve_url",
    "safe_url",
]
