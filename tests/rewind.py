"""Tests that put a store back to an earlier revision: forget the records of the
revisions from ``seq`` on, and drop the tables and indexes those revisions created. A
new revision that creates a table or an index adds it to ``MADE_BY``."""

from __future__ import annotations

import sqlalchemy as sa

MADE_BY = {"0005": ("TABLE alias_changes",), "0006": ("INDEX ix_spans_error",),
           "0007": ("INDEX ix_spans_roots_by_time", "INDEX ix_spans_agent_runs_by_time",
                    "INDEX ix_spans_llm_calls"),
           "0008": ("INDEX ix_spans_agent_traces", "INDEX ix_spans_llm_calls_by_trace")}


def forget_revisions_from(conn, seq: str) -> None:
    for revision, made in sorted(MADE_BY.items(), reverse=True):
        if revision >= seq:
            for what in made:
                conn.execute(sa.text(f"DROP {what}"))
    conn.execute(sa.text("DELETE FROM gepa_migrations WHERE seq >= :seq"), {"seq": seq})
