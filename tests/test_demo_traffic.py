"""The traffic generator: traced runs of the demo agent and users' feedback on them."""

from __future__ import annotations

import sqlalchemy as sa

from gepa_trace.demo import AGENT_NAME, metric
from gepa_trace.demo.traffic import run_traffic, traffic_questions


def test_traffic_records_traced_runs_and_user_feedback_that_follows_the_truth(sqlite_url):
    trace_ids = run_traffic(40, store=sqlite_url, seed=3, feedback_rate=0.75, noise=0.0,
                            review_rate=0.2, threads=3)
    assert len(trace_ids) == len(set(trace_ids)) == 40
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        roots = conn.execute(sa.text(
            "select trace_id from spans where span_type = 'agent' and agent = :a"),
            {"a": AGENT_NAME}).scalars().all()
        components = set(conn.execute(sa.text(
            "select distinct component from spans where span_type = 'llm'")).scalars())
        feedback = conn.execute(sa.text(
            "select trace_id, score, comment, name, source, expected from feedback")).all()
    engine.dispose()
    assert set(roots) == set(trace_ids)
    assert components == {"query_writer", "evidence_selector", "answerer"}
    users = [f for f in feedback if f.source == "user"]
    reviews = [f for f in feedback if f.source == "reviewer"]
    assert 20 <= len(users) <= 38 and reviews and {f.name for f in reviews} == {"review"}
    # With no noise, a thumbs down is exactly a wrong answer; reviewers know the answer.
    examples = dict(zip(trace_ids, traffic_questions(40, seed=3)))
    for f in users + reviews:
        ex = examples[f.trace_id]
        if f.expected is not None:
            assert f.score == 0.0
        if f.source == "reviewer" and f.expected is not None:
            assert f.expected == ex.expected
    assert {f.score for f in users} == {0.0, 1.0}
    downs = [f for f in users if f.score == 0.0]
    assert any(f.expected for f in downs) and any(f.comment for f in downs)


def test_traffic_feedback_is_realistic_most_runs_get_none_and_some_corrections_are_wrong():
    import random

    from gepa_trace.demo.traffic import _user_feedback, plausible_wrong

    rng = random.Random(0)
    questions = traffic_questions(200, seed=5)
    given = [_user_feedback(q, {"answer": "The founder was born in a place far away"},
                            rng, noise=0.0) for q in questions]
    corrections = [(q, g["expected"]) for q, g in zip(questions, given) if "expected" in g]
    wrong = [(q, e) for q, e in corrections if e != q.expected]
    assert all(g["score"] == 0.0 for g in given)  # every answer here is wrong
    assert 0.25 <= len(corrections) / 200 <= 0.45 and 0 < len(wrong) < len(corrections) / 4
    comments = [g.get("comment") for g in given if g.get("comment")]
    assert "too long" in comments and any("should be" in c or "Correct answer" in c
                                          for c in comments)
    q = questions[0]
    assert plausible_wrong(q, random.Random(1)) != q.expected


def test_traffic_questions_repeat_once_the_distinct_ones_run_out():
    qs = traffic_questions(800, seed=0)
    assert len(qs) == 800 and len({q.inputs["question"] for q in qs}) == 750
    assert all(metric(q, {"answer": q.expected}).score == 1.0 for q in qs[:50])
