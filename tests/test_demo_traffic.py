"""The traffic generator: traced runs of the demo agent and users' feedback on them."""

from __future__ import annotations

import sqlalchemy as sa

from gepa_trace.demo import AGENT_NAME, metric
from gepa_trace.demo.traffic import run_traffic, traffic_questions


def test_traffic_records_traced_runs_and_user_feedback_that_follows_the_truth(sqlite_url):
    trace_ids = run_traffic(24, store=sqlite_url, seed=3, feedback_rate=0.75, noise=0.0,
                            correction_rate=1.0, threads=3)
    assert len(trace_ids) == len(set(trace_ids)) == 24
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        roots = conn.execute(sa.text(
            "select trace_id from spans where span_type = 'agent' and agent = :a"),
            {"a": AGENT_NAME}).scalars().all()
        components = set(conn.execute(sa.text(
            "select distinct component from spans where span_type = 'llm'")).scalars())
        feedback = conn.execute(sa.text(
            "select trace_id, score, comment, name from feedback")).all()
    engine.dispose()
    assert set(roots) == set(trace_ids)
    assert components == {"query_writer", "evidence_selector", "answerer"}
    assert 10 <= len(feedback) <= 24 and {f.name for f in feedback} == {"user"}
    # With no noise, a thumbs down is exactly a wrong answer, and carries the correction.
    examples = dict(zip(trace_ids, traffic_questions(24, seed=3)))
    for f in feedback:
        ex = examples[f.trace_id]
        if f.score == 0.0:
            assert f.comment and ex.expected in f.comment
    assert {f.score for f in feedback} == {0.0, 1.0}


def test_traffic_questions_repeat_once_the_distinct_ones_run_out():
    qs = traffic_questions(800, seed=0)
    assert len(qs) == 800 and len({q.inputs["question"] for q in qs}) == 750
    assert all(metric(q, {"answer": q.expected}).score == 1.0 for q in qs[:50])
