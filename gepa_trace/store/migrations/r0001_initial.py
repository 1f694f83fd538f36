"""0001_initial: the schema the first release created (commit e7fd2dc), frozen.

Written out column by column from that release's models; it never reads today's models.
``tests/fixtures/store_first_schema.sqlite`` is a store this schema made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:  # alembic is imported only when a store needs migrating
    from alembic.operations import Operations

NAME = "0001_initial"


def upgrade(op: Operations) -> None:
    op.create_table(
        "spans",
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("parent_span_id", sa.String(16)),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("start_ns", sa.BigInteger, nullable=False),
        sa.Column("end_ns", sa.BigInteger, nullable=False),
        sa.Column("status_code", sa.String(8), nullable=False),
        sa.Column("status_message", sa.Text),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("service_name", sa.String(255)),
        sa.Column("agent", sa.String(255)),
        sa.Column("component", sa.String(255)),
        sa.Column("span_type", sa.String(16)),
        sa.Column("run_id", sa.String(64)),
        sa.Column("prompt_version", sa.String(64)),
        sa.Column("model", sa.String(255)),
        sa.Column("input_tokens", sa.Integer),
        sa.Column("output_tokens", sa.Integer),
        sa.PrimaryKeyConstraint("trace_id", "span_id"),
    )
    op.create_index("ix_spans_agent_root", "spans", ["agent", "parent_span_id", "start_ns"])
    op.create_index("ix_spans_component", "spans", ["component"])
    op.create_index("ix_spans_run", "spans", ["run_id"])
    op.create_index("ix_spans_span_type", "spans", ["span_type"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16)),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("score", sa.Float),
        sa.Column("label", sa.String(255)),
        sa.Column("comment", sa.Text),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_feedback_trace_id", "feedback", ["trace_id"])

    op.create_table(
        "prompt_versions",
        sa.Column("component", sa.String(255), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(255)),
        sa.Column("template", sa.Text, nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(64)),
        sa.Column("candidate_id", sa.Integer),
        sa.Column("parent_version", sa.String(64)),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("component", "version"),
    )
    op.create_table(
        "prompt_aliases",
        sa.Column("component", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("component", "alias"),
    )

    op.create_table(
        "optimization_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("best_candidate_id", sa.Integer),
        sa.Column("totals", sa.Text, nullable=False),
        sa.Column("warm_start_from", sa.String(64)),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_optimization_runs_agent", "optimization_runs", ["agent"])

    op.create_table(
        "candidates",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("prompts", sa.Text, nullable=False),
        sa.Column("parents", sa.Text, nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("component", sa.String(255)),
        sa.Column("diagnosis", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("minibatch_parent_sum", sa.Float),
        sa.Column("minibatch_child_sum", sa.Float),
        sa.Column("val_score", sa.Float),
        sa.Column("iteration", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "id"),
    )

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("candidate_id", sa.Integer, nullable=False),
        sa.Column("example_id", sa.String(255), nullable=False),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("feedback", sa.Text),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("error", sa.Text),
        sa.Column("llm_calls", sa.Integer, nullable=False),
        sa.Column("cache_hits", sa.Integer, nullable=False),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_evaluations_candidate", "evaluations", ["run_id", "candidate_id"])

    op.create_table(
        "run_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_run_events_run", "run_events", ["run_id", "seq"])

    op.create_table(
        "run_locks",
        sa.Column("agent", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("agent"),
    )
