"""The store's tables. One schema for SQLite and PostgreSQL.

JSON-valued columns are TEXT holding JSON (portable and fast to bulk-insert); the
derived columns used for filtering are plain indexed columns. Time is nanoseconds since
the epoch for spans (as OpenTelemetry gives it) and float seconds elsewhere.

Changing a table means adding a revision in ``store/migrations/`` (its docstring says how).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Text, text
from sqlmodel import Field, SQLModel

#: The run id the optimizer's preflight tags its tries with (spans with no run row).
PREFLIGHT_RUN_ID = "preflight"

# Predicates of partial indexes. A query reaches such an index on SQLite only when its
# WHERE has the same terms, literals included (a bound parameter does not match 'llm').
_ROOT = "parent_span_id IS NULL"
_PRODUCTION_ROOT = "parent_span_id IS NULL AND run_id IS NULL"
_LLM_CALL = "span_type = 'llm' AND component IS NOT NULL"


class SpanRow(SQLModel, table=True):
    __tablename__ = "spans"
    __table_args__ = (
        Index("ix_spans_agent_root", "agent", "parent_span_id", "start_ns"),
        # Partial: most spans have no component and no optimization run, and every
        # index entry is paid for on the write path (the collector's limit). By start
        # time within a component: a run's seed reads a component's latest spans only.
        Index("ix_spans_component", "component", "start_ns",
              sqlite_where=text("component IS NOT NULL"),
              postgresql_where=text("component IS NOT NULL")),
        Index("ix_spans_run", "run_id", sqlite_where=text("run_id IS NOT NULL"),
              postgresql_where=text("run_id IS NOT NULL")),
        # Flagged spans are rare: the index costs nothing for the others.
        Index("ix_spans_flagged", "component", sqlite_where=text("prompt_flag IS NOT NULL"),
              postgresql_where=text("prompt_flag IS NOT NULL")),
        # Failed spans are rare too: finding the traces with an error (the web UI's
        # filter) is one lookup per trace in this small index.
        Index("ix_spans_error", "trace_id", sqlite_where=text("status_code = 'ERROR'"),
              postgresql_where=text("status_code = 'ERROR'")),
        # The listings (revision 0007_listing_indexes says which query reads
        # which). Partial: only roots and LLM calls pay for them on the write path.
        Index("ix_spans_roots_by_time", "start_ns", "trace_id", "span_id", "run_id",
              sqlite_where=text(_ROOT), postgresql_where=text(_ROOT)),
        Index("ix_spans_agent_runs_by_time", "agent", "start_ns", "trace_id", "span_id",
              sqlite_where=text(_PRODUCTION_ROOT), postgresql_where=text(_PRODUCTION_ROOT)),
        Index("ix_spans_llm_calls", "component", "prompt_version", "start_ns", "span_type",
              sqlite_where=text(_LLM_CALL), postgresql_where=text(_LLM_CALL)),
        # `components --agent`: the agent's traces, then their LLM calls, both from an
        # index alone (revision 0008_agent_call_indexes).
        Index("ix_spans_agent_traces", "agent", "trace_id",
              sqlite_where=text(_ROOT), postgresql_where=text(_ROOT)),
        Index("ix_spans_llm_calls_by_trace", "trace_id", "component", "prompt_version",
              "start_ns", "span_type",
              sqlite_where=text(_LLM_CALL), postgresql_where=text(_LLM_CALL)),
    )

    trace_id: str = Field(primary_key=True, max_length=32)
    span_id: str = Field(primary_key=True, max_length=16)
    parent_span_id: str | None = Field(default=None, max_length=16)
    name: str = Field(sa_column=Column(Text, nullable=False))
    kind: str = Field(default="INTERNAL", max_length=16)
    start_ns: int = Field(sa_column=Column(BigInteger, nullable=False))
    end_ns: int = Field(sa_column=Column(BigInteger, nullable=False))
    status_code: str = Field(default="UNSET", max_length=8)
    status_message: str | None = Field(default=None, sa_column=Column(Text))
    attributes: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    events: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    resource: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    service_name: str | None = Field(default=None, max_length=255)
    # derived, indexed
    agent: str | None = Field(default=None, max_length=255)
    component: str | None = Field(default=None, max_length=255)
    span_type: str | None = Field(default=None, max_length=16)
    run_id: str | None = Field(default=None, max_length=64)
    prompt_version: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=255)
    input_tokens: int | None = None
    output_tokens: int | None = None
    # Why this span's prompt version is not trusted (None: nothing wrong seen):
    # "inconsistent" = its declared version is not the hash of the template it carries.
    # A flagged span is stored but never counts toward a run's seed (prompts.seed).
    prompt_flag: str | None = Field(default=None, max_length=32)


class FeedbackRow(SQLModel, table=True):
    """One feedback record. ``score`` lies in ``[score_low, score_high]`` (the range
    declared with it; 0..1 unless given). ``expected`` is an explicit correction: the
    right output, or the right value of the output field ``expected_field``.
    ``source``: user | reviewer | automated. ``feedback_key`` makes a record idempotent
    (given by the caller, else a hash of its content); ``replaced_by`` is the id of the
    record that replaced this one (``--replace``); a replaced record is kept, not used."""

    __tablename__ = "feedback"
    # Unique among records in effect: a replacement may keep its feedback_id, and the
    # record it replaced keeps the key too (a retry of it is then still a duplicate).
    __table_args__ = (Index("ux_feedback_key", "feedback_key", unique=True,
                            sqlite_where=text("replaced_by IS NULL"),
                            postgresql_where=text("replaced_by IS NULL")),)

    id: int | None = Field(default=None, primary_key=True)
    trace_id: str = Field(index=True, max_length=32)
    span_id: str | None = Field(default=None, max_length=16)
    name: str = Field(default="user", max_length=255)
    score: float | None = None
    label: str | None = Field(default=None, max_length=255)
    comment: str | None = Field(default=None, sa_column=Column(Text))
    source: str = Field(default="user", max_length=64)
    created_at: float
    expected: str | None = Field(default=None, sa_column=Column(Text))
    expected_field: str | None = Field(default=None, max_length=255)
    score_low: float | None = None
    score_high: float | None = None
    feedback_key: str | None = Field(default=None, max_length=128)
    replaced_by: int | None = None


class ExampleMarkRow(SQLModel, table=True):
    """A user's decision about one recorded run as an example: ``excluded`` (never
    given to the optimizer) or ``golden`` (always in validation). One mark per run."""

    __tablename__ = "example_marks"

    agent: str = Field(primary_key=True, max_length=255)
    trace_id: str = Field(primary_key=True, max_length=32)
    mark: str = Field(max_length=16)  # excluded | golden
    reason: str | None = Field(default=None, sa_column=Column(Text))
    created_at: float


class PromptVersionRow(SQLModel, table=True):
    __tablename__ = "prompt_versions"

    component: str = Field(primary_key=True, max_length=255)
    version: str = Field(primary_key=True, max_length=64)
    agent: str | None = Field(default=None, max_length=255)
    template: str = Field(sa_column=Column(Text, nullable=False))  # messages JSON
    origin: str = Field(default="observed", max_length=32)  # observed | optimization | file
    run_id: str | None = Field(default=None, max_length=64)
    candidate_id: int | None = None
    parent_version: str | None = Field(default=None, max_length=64)
    first_seen: float
    last_seen: float


class PromptAliasRow(SQLModel, table=True):
    __tablename__ = "prompt_aliases"

    component: str = Field(primary_key=True, max_length=255)
    alias: str = Field(primary_key=True, max_length=64)
    version: str = Field(max_length=64)
    updated_at: float


class AliasChangeRow(SQLModel, table=True):
    """One change of an alias, never updated or deleted: what it pointed at before
    (``previous``, None: not set) and after (``version``, None: removed), who or what
    changed it (``actor``: a person via a command, an export, the canary, the nightly
    policy), why (``reason``) and the figures it acted on (``evidence``, JSON)."""

    __tablename__ = "alias_changes"
    __table_args__ = (Index("ix_alias_changes_alias", "alias", "component", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    component: str = Field(max_length=255)
    alias: str = Field(max_length=64)
    previous: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=64)
    actor: str = Field(max_length=255)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    evidence: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    created_at: float


class OptimizationRunRow(SQLModel, table=True):
    """One optimization run. ``iteration`` is the next iteration to run (resume restarts
    there); ``totals`` is the latest budget and counter snapshot (JSON)."""

    __tablename__ = "optimization_runs"

    id: str = Field(primary_key=True, max_length=64)
    agent: str = Field(index=True, max_length=255)
    status: str = Field(default="running", max_length=16)  # running | finished | stopped | failed
    config: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))  # JSON
    seed: int = 0
    iteration: int = 0
    started_at: float
    finished_at: float | None = None
    heartbeat_at: float | None = None
    best_candidate_id: int | None = None
    best_val_score: float | None = None
    stop_reason: str | None = Field(default=None, sa_column=Column(Text))
    totals: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))  # JSON
    warm_start_from: str | None = Field(default=None, max_length=64)


class CandidateRow(SQLModel, table=True):
    """A candidate of a run: one prompt version per component, with its lineage.

    ``status``: proposed (built, not yet judged) | accepted (won its minibatch; in the
    pool once every validation example is scored) | rejected (``reason`` says why).
    """

    __tablename__ = "candidates"

    run_id: str = Field(primary_key=True, max_length=64)
    id: int = Field(primary_key=True)
    prompts: str = Field(sa_column=Column(Text, nullable=False))  # JSON {component: version}
    parents: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))  # JSON [ids]
    origin: str = Field(max_length=32)  # seed | reflection | merge | warm_start
    component: str | None = Field(default=None, max_length=255)  # the one(s) reflected on
    diagnosis: str | None = Field(default=None, sa_column=Column(Text))
    status: str = Field(default="proposed", max_length=16)  # proposed | accepted | rejected
    reason: str | None = Field(default=None, sa_column=Column(Text))
    minibatch: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))  # JSON [example ids]
    minibatch_parent_sum: float | None = None
    minibatch_child_sum: float | None = None
    val_score: float | None = None
    meta: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))  # JSON
    iteration: int = 0
    created_at: float


class EvaluationRow(SQLModel, table=True):
    """One rollout: a candidate's prompts on one example. A pair is stored at most once
    per run (the evaluation cache); ``records`` holds the per-component records (JSON)
    that reflection reads."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_candidate", "run_id", "candidate_id"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=64)
    candidate_id: int
    example_id: str = Field(max_length=255)
    purpose: str = Field(default="val", max_length=16)  # minibatch | val | test | merge
    score: float
    feedback: str | None = Field(default=None, sa_column=Column(Text))
    output: str | None = Field(default=None, sa_column=Column(Text))  # JSON
    records: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))  # JSON
    trace_id: str | None = Field(default=None, max_length=32)
    error: str | None = Field(default=None, sa_column=Column(Text))
    llm_calls: int = 0
    cache_hits: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    created_at: float


class RunEventRow(SQLModel, table=True):
    """An append-only log of what happened in a run (front changes, budget, errors)."""

    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run", "run_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(max_length=64)
    seq: int
    kind: str = Field(max_length=32)
    payload: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    created_at: float


class RunLockRow(SQLModel, table=True):
    """At most one running optimization per agent (see optimizer.persistence.RunLock)."""

    __tablename__ = "run_locks"

    agent: str = Field(primary_key=True, max_length=255)
    run_id: str = Field(max_length=64)
    pid: int
    host: str = Field(max_length=255)
    acquired_at: float
    heartbeat_at: float
