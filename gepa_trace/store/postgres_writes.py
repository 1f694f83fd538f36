"""How a transaction of span rows reaches PostgreSQL: COPY, and the statements around it
in as few round trips as the protocol allows.

``store.spans.write_prepared`` decides what a transaction holds; this module sends it.
On a loaded machine a round trip costs milliseconds (PostgreSQL's backend must be
scheduled, then the writer thread must win the GIL back from the request threads), and
the single writer thread waits through each one. Raw ``COPY`` makes four a transaction
(BEGIN, COPY, its end, COMMIT); so does a transaction here (``pipelined_transaction``),
with the statements of the PROMPT/LLM joins and the prompt versions riding along:

1. BEGIN and the stored spans the PROMPT/LLM joins need (``read_stored_spans``), one
   pipeline (when no join needs the store, BEGIN goes alone, as for raw COPY);
2. ``COPY spans FROM STDIN`` (``copy_span_rows``), and
3. its end;
4. the joins' updates of stored LLM spans, the prompt-version upsert and COMMIT, one
   pipeline (``finish``).

SQLAlchemy's ``execute`` cannot run inside psycopg's pipeline mode, so the statements
are SQLAlchemy's own, compiled once for psycopg and sent on the driver connection of the
SQLAlchemy connection that ``Store.write()`` holds. BEGIN and COMMIT are sent in the
pipelines; the ``Store.write()`` commit that follows finds no transaction open and sends
nothing. A span is still acknowledged only after that COMMIT succeeded
(``synchronous_commit`` is left as the server has it).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import psycopg as _psycopg

from gepa_trace.store.prompt_links import LINK_COLUMNS, UPDATE_LINKED
from gepa_trace.store.tables import PromptVersionRow, SpanRow

_SPANS = SpanRow.__table__
_VERSIONS = PromptVersionRow.__table__
_STAGING = "gepa_trace_spans_staging"
#: The prompt_versions columns ``store.spans`` fills for a version seen in spans.
VERSION_COLUMNS = ("component", "version", "agent", "template", "origin", "first_seen",
                   "last_seen")


def _compiled(statement: Any) -> str:
    return str(statement.compile(dialect=_psycopg.dialect()))


_READ_STORED = _compiled(
    select(*(_SPANS.c[c] for c in LINK_COLUMNS))
    .where(_SPANS.c.trace_id == any_(bindparam("traces", type_=ARRAY(String)))))
_UPDATE_LINKED = _compiled(UPDATE_LINKED)
_upsert = insert(_VERSIONS).values({c: bindparam(c) for c in VERSION_COLUMNS})
# Every version seen gets last_seen = now; one that is new is inserted.
_UPSERT_VERSIONS = _compiled(_upsert.on_conflict_do_update(
    index_elements=[_VERSIONS.c.component, _VERSIONS.c.version],
    set_={"last_seen": _upsert.excluded.last_seen}))


class AlreadyStored(Exception):
    """PostgreSQL refused the straight COPY: a span of it is stored already."""


@contextmanager
def pipelined_transaction(conn: Any) -> Iterator[PipelinedTransaction]:
    """One write transaction on the psycopg connection under the SQLAlchemy connection
    ``conn`` (``Store.write()``'s), whose BEGIN and COMMIT we send ourselves so that they
    ride in the pipelines of the statements next to them: psycopg's own BEGIN, even in
    pipeline mode, waits for its answer before the first statement is sent.

    The driver connection is in autocommit mode only inside the block (psycopg then
    sends no BEGIN of its own); the transaction is ours, ended by COMMIT in ``finish``
    or ``commit``, or rolled back when the block raises or leaves it open. SQLAlchemy
    statements run on ``conn`` inside the block (the spans' feedback) are part of it.
    """
    from psycopg import Error
    from psycopg.pq import TransactionStatus

    raw = conn.connection.driver_connection
    raw.autocommit = True
    failed = False
    try:
        yield PipelinedTransaction(raw)
    except BaseException:
        failed = True
        raise
    finally:
        try:
            if raw.info.transaction_status != TransactionStatus.IDLE:
                raw.rollback()  # nothing of it is stored
        except Error:
            if not failed:
                raise
            # the connection is broken: the error the block raised says why
        finally:
            if raw.info.transaction_status == TransactionStatus.IDLE:
                raw.autocommit = False  # a pooled connection: as SQLAlchemy expects it
            else:  # unusable: SQLAlchemy must not hand it out again
                conn.invalidate()


class PipelinedTransaction:
    """The statements of ``pipelined_transaction``, each call one round trip."""

    def __init__(self, raw: Any):
        self._raw = raw
        self._begun = False

    def _begin(self, cursor: Any) -> None:
        if not self._begun:
            cursor.execute("BEGIN")
            self._begun = True

    def read_stored_spans(self, trace_ids: Collection[str]) -> list[dict[str, Any]]:
        """``prompt_links.LINK_COLUMNS`` of the stored spans of ``trace_ids``: one
        query, in one round trip with the transaction's BEGIN."""
        with self._raw.cursor() as cursor:
            with self._raw.pipeline():
                self._begin(cursor)
                cursor.execute(_READ_STORED, {"traces": sorted(trace_ids)})
            return [dict(zip(LINK_COLUMNS, row)) for row in cursor.fetchall()]

    def copy_span_rows(self, columns: Sequence[str], values: Sequence[tuple],
                       straight: bool) -> None:
        """COPY the rows ``straight`` into the spans table, or through staging.

        COPY cannot skip a span already stored: when one is (a client's retry, or
        another collector storing the same span at the same moment), the straight COPY
        fails with the whole transaction (``AlreadyStored``), and
        ``store.spans.write_prepared`` runs it again with the rows going through a
        session-local staging table and one INSERT ... SELECT ... ON CONFLICT DO NOTHING
        instead. The straight path skips that second copy of every row, which cost more
        than the COPY itself, and a savepoint around it, two more round trips of every
        transaction. Rows come sorted by primary key on both paths, so two writers
        inserting overlapping batches (two collectors) wait on each other's keys in the
        same order and cannot deadlock. The staging table empties itself at commit (a
        rollback discards its rows too); it is created in the same transaction, so a
        rollback never leaves a connection believing it has one.
        """
        from psycopg import errors

        names = ", ".join(columns)
        with self._raw.cursor() as cursor:
            self._begin(cursor)  # COPY cannot ride a pipeline
            if straight:
                try:
                    _copy(cursor, _SPANS.name, names, values)
                except errors.UniqueViolation:
                    raise AlreadyStored from None
                return
            cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} "
                           f"(LIKE {_SPANS.name}) ON COMMIT DELETE ROWS")
            _copy(cursor, _STAGING, names, values)
            cursor.execute(f"INSERT INTO {_SPANS.name} ({names}) SELECT {names} FROM "
                           f"{_STAGING} ORDER BY trace_id, span_id ON CONFLICT DO NOTHING")

    def finish(self, updates: list[dict[str, Any]], versions: list[dict[str, Any]],
               commit: bool = True) -> None:
        """After the COPY, in one round trip: the joins' ``updates`` of stored LLM spans
        (``prompt_links.link_prompt_spans``), the upsert of ``versions`` (dicts of
        ``VERSION_COLUMNS``, in key order so that two writers lock them in the same
        order), and COMMIT unless ``commit`` is false (the caller has more to write and
        calls ``commit`` itself)."""
        if not (updates or versions or commit):
            return
        with self._raw.cursor() as cursor, self._raw.pipeline():
            self._begin(cursor)
            if updates:
                cursor.executemany(_UPDATE_LINKED, updates)
            if versions:
                cursor.executemany(_UPSERT_VERSIONS, sorted(
                    versions, key=lambda v: (v["component"], v["version"])))
            if commit:
                cursor.execute("COMMIT")

    def commit(self) -> None:
        with self._raw.cursor() as cursor:
            cursor.execute("COMMIT")


def _copy(cursor: Any, table: str, columns: str, values: Sequence[tuple]) -> None:
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in values:
            copy.write_row(row)
