"""Named schema migrations, applied forward in order, each recorded in the database.

A migration is a function of a connection inside the migration transaction. Append new
ones to ``MIGRATIONS``; never edit or reorder one that has shipped. ``SCHEMA_VERSION``
is the number of migrations this code knows; a database that records more was written
by a newer gepa-trace and is refused rather than guessed at.

The ``gepa_migrations`` table is what makes a database ours. One without it is
initialised only when it has no tables at all and the caller may create a store; a
database with other tables is refused, never added to (see ``store.engine``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Column, Float, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Connection

from gepa_trace.errors import SchemaTooNewError, StoreError, StoreMissing
from gepa_trace.store.engine import MISSING_HINT, safe_url, sqlite_path
from gepa_trace.store.migration_listing import listing_indexes

_meta = MetaData()
migrations_table = Table(
    "gepa_migrations", _meta,
    Column("seq", String(8), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("applied_at", Float, nullable=False),
)


def _initial(conn: Connection) -> None:
    from sqlmodel import SQLModel

    from gepa_trace.store import tables  # noqa: F401  (registers the tables)

    SQLModel.metadata.create_all(conn)


def _feedback_fields(conn: Connection) -> None:
    """Explicit feedback fields (issue 17): the correction, the score's declared range,
    an idempotency key, replacement; the source vocabulary user | reviewer | automated;
    the example marks table (excluded / golden runs)."""
    from gepa_trace.store.tables import ExampleMarkRow, FeedbackRow

    have = {c["name"] for c in inspect(conn).get_columns("feedback")}
    table = FeedbackRow.__table__
    for name in ("expected", "expected_field", "score_low", "score_high", "feedback_key",
                 "replaced_by"):
        if name in have:
            continue
        column = table.c[name]
        kind = column.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE feedback ADD COLUMN {name} {kind}"))
    if "ux_feedback_key" not in {i["name"] for i in inspect(conn).get_indexes("feedback")}:
        # Unique among records in effect only (see FeedbackRow): a replacement may keep
        # the feedback_id of the record it replaces. Partial indexes: SQLite >= 3.8.
        conn.execute(text("CREATE UNIQUE INDEX ux_feedback_key ON feedback (feedback_key) "
                          "WHERE replaced_by IS NULL"))
    # Before: free text, "human" by default; now user | reviewer | automated, and the
    # aliases of store.verdict are stored as their canonical name. A source that is
    # neither (e.g. "llm") is left as it was: store.verdict ranks it as a user's.
    # Records stored without a range were 0..1 and keep NULL (meaning 0..1).
    from gepa_trace.store.verdict import SOURCE_ALIASES

    for alias, canonical in sorted(SOURCE_ALIASES.items()):
        conn.execute(text("UPDATE feedback SET source = :canonical WHERE lower(source) = :alias"),
                     {"canonical": canonical, "alias": alias})
    _key_old_feedback(conn)
    ExampleMarkRow.__table__.create(conn, checkfirst=True)


def _key_old_feedback(conn: Connection) -> None:
    """Give records stored before keys existed their content key, so importing again a
    file imported before the upgrade stores nothing. Where old imports stored one
    content several times, only the first copy gets the key (the others stay in effect,
    as they were: the migration does not decide that a copy was a mistake)."""
    from gepa_trace.store.feedback_fields import content_key

    rows = conn.execute(text("SELECT id, trace_id, span_id, name, score, score_low, "
                             "score_high, label, comment, expected, expected_field, source "
                             "FROM feedback WHERE feedback_key IS NULL ORDER BY id")).mappings()
    seen: set[str] = set()
    keyed = []
    for row in rows:
        key = content_key(row)
        if key not in seen:
            seen.add(key)
            keyed.append({"id": row["id"], "key": key})
    if keyed:
        conn.execute(text("UPDATE feedback SET feedback_key = :key WHERE id = :id"), keyed)


def _prompt_flags(conn: Connection) -> None:
    """Spans whose declared prompt version is not the hash of the template they carry
    are flagged (issue 18: such a span must never seed a run). Spans stored before are
    checked once here, by the rule new spans are checked by (``store.spans``). The
    component index also orders by start time (``prompts.seed`` reads the latest)."""
    from gepa_trace.store.tables import SpanRow

    if "prompt_flag" not in {c["name"] for c in inspect(conn).get_columns("spans")}:
        kind = SpanRow.__table__.c.prompt_flag.type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE spans ADD COLUMN prompt_flag {kind}"))
    indexes = {i["name"]: i["column_names"] for i in inspect(conn).get_indexes("spans")}
    if "ix_spans_flagged" not in indexes:
        conn.execute(text("CREATE INDEX ix_spans_flagged ON spans (component) "
                          "WHERE prompt_flag IS NOT NULL"))
    if indexes.get("ix_spans_component") == ["component"]:
        # by start time within a component: the seed reads a component's latest spans
        conn.execute(text("DROP INDEX ix_spans_component"))
        conn.execute(text("CREATE INDEX ix_spans_component ON spans (component, start_ns) "
                          "WHERE component IS NOT NULL"))
    _flag_stored_spans(conn)


def _flag_stored_spans(conn: Connection) -> None:
    import json

    from gepa_trace.collectors.conventions import prompt_template_json
    from gepa_trace.store.spans import INCONSISTENT, template_matches

    # Only spans with a component, a version and a template can be inconsistent; one
    # pass, a page at a time, keeping only the keys of those to flag.
    result = conn.execute(text(
        "SELECT trace_id, span_id, prompt_version, attributes FROM spans "
        "WHERE component IS NOT NULL AND prompt_version IS NOT NULL AND ("
        "attributes LIKE '%gepa.prompt.template%' "
        "OR attributes LIKE '%llm.prompt_template.template%' "
        "OR attributes LIKE '%gen_ai.system_instructions%')"))
    flagged = []
    for rows in result.partitions(5000):
        for row in rows:
            try:
                attributes = json.loads(row.attributes)
            except ValueError:
                continue
            template = prompt_template_json(attributes) if isinstance(attributes, dict) \
                else None
            if template and not template_matches(row.prompt_version, template):
                flagged.append({"t": row.trace_id, "s": row.span_id})
    if flagged:
        conn.execute(text(f"UPDATE spans SET prompt_flag = '{INCONSISTENT}' "
                          "WHERE trace_id = :t AND span_id = :s"), flagged)


MIGRATIONS: list[tuple[str, Callable[[Connection], None]]] = [
    ("0001_initial", _initial),
    ("0002_feedback_fields", _feedback_fields),
    ("0003_prompt_flags", _prompt_flags),
    ("0004_listing_indexes", listing_indexes),
]
SCHEMA_VERSION = len(MIGRATIONS)


def applied(conn: Connection) -> list[str]:
    rows = conn.execute(select(migrations_table.c.seq, migrations_table.c.name)
                        .order_by(migrations_table.c.seq)).all()
    return [name for _seq, name in rows]


def migrate_forward(store, *, create: bool = False) -> list[str]:
    """Apply the migrations the database lacks; return their names.

    A database without ``gepa_migrations`` is initialised only if it has no tables and
    ``create`` is true; otherwise ``StoreMissing`` (no tables) or ``StoreError`` (other
    tables), and nothing is written.
    """
    with store.write() as conn:
        if store.dialect == "postgresql":
            # Two processes opening a new database at once: one migrates, one waits.
            conn.execute(text("SELECT pg_advisory_xact_lock(743201)"))
        # Checked inside the write transaction, so two creators racing on one new
        # database see each other's tables rather than both deciding it is empty.
        tables = inspect(conn).get_table_names()
        if migrations_table.name not in tables:
            _refuse_unless_creatable(store, tables, create)
        _meta.create_all(conn, checkfirst=True)
        done = applied(conn)
        if len(done) > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"store {safe_url(store.url)} has schema version {len(done)} (last migration "
                f"{done[-1]!r}) but this gepa-trace knows only {SCHEMA_VERSION}; "
                "upgrade gepa-trace to open it")
        known = [name for name, _fn in MIGRATIONS]
        if done != known[: len(done)]:
            raise SchemaTooNewError(
                f"store {safe_url(store.url)} records migrations {done} that this gepa-trace "
                "does not know; upgrade gepa-trace to open it")
        new = []
        for index in range(len(done), SCHEMA_VERSION):
            name, fn = MIGRATIONS[index]
            fn(conn)
            conn.execute(migrations_table.insert().values(
                seq=f"{index + 1:04d}", name=name, applied_at=time.time()))
            new.append(name)
        return new


def _refuse_unless_creatable(store, tables: list[str], create: bool) -> None:
    url = safe_url(store.url)
    if tables:
        names = sorted(tables)
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise StoreError(f"store {url} is not a gepa-trace store (it has tables: {shown}); "
                         "refusing to add ours")
    if not create:
        path = sqlite_path(store.url)
        where = f"{path} (the file has no tables" if path is not None else \
            f"{url} (the database schema has no tables"
        raise StoreMissing(f"no store at {where}; {MISSING_HINT})")
