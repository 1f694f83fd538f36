"""Tests that put a store back to an earlier revision: forget the records of the
revisions from ``seq`` on, and drop the tables those revisions created. A new revision
that creates a table adds it to ``TABLES_MADE_BY``."""

from __future__ import annotations

import sqlalchemy as sa

TABLES_MADE_BY = {"0005": ("alias_changes",)}


def forget_revisions_from(conn, seq: str) -> None:
    for revision, tables in sorted(TABLES_MADE_BY.items()):
        if revision >= seq:
            for table in tables:
                conn.execute(sa.text(f"DROP TABLE {table}"))
    conn.execute(sa.text("DELETE FROM gepa_migrations WHERE seq >= :seq"), {"seq": seq})
