"""`gepa-trace demo` learns from its production feedback only: the world's answer key
is not reachable from the optimization, and the summary reports both figures, labelled."""

from __future__ import annotations

import sys

import pytest
from instrumented import instrumentation_shut_down


class AnswerKeyGuard:
    """Makes the world's answer key raise while ``closed`` (the optimization phase)."""

    def __init__(self):
        self.closed = False
        self.phases: list[str] = []

    def progress(self, message: str) -> None:
        self.phases.append(message)
        if message.startswith("[2/5]"):
            self.closed = True  # the optimization starts
        elif message.startswith(("[3/5]", "[5/5]")):
            self.closed = False  # the oracle may report the TRUE figures afterwards

    def wrap(self, fn):
        def guarded(*args, **kwargs):
            if self.closed:
                raise AssertionError("the optimization reached the world's answer key")
            return fn(*args, **kwargs)
        return guarded


def test_the_demo_optimizes_without_the_worlds_answer_key_and_still_improves(
        tmp_path, monkeypatch):
    import gepa_trace.demo
    import gepa_trace.demo.traffic
    import gepa_trace.demo.world
    from gepa_trace.demo.cycle import DemoSettings, run_demo, summary_lines

    oracle = sys.modules["gepa_trace.demo.metric"]
    guard = AnswerKeyGuard()
    for module, name in ((oracle, "metric"), (oracle, "answer_of"),
                         (gepa_trace.demo.world, "answer_of"), (gepa_trace.demo, "metric"),
                         (gepa_trace.demo.traffic, "metric")):
        monkeypatch.setattr(module, name, guard.wrap(getattr(module, name)))
    settings = DemoSettings(out_dir=tmp_path / "demo", runs=150, budget_rollouts=240,
                            processes=1, workers=4, progress=guard.progress)
    with instrumentation_shut_down():
        summary = run_demo(settings)
    assert any(p.startswith("[2/5]") for p in guard.phases)
    assert summary["metric"] == "feedback"
    assert summary["true_test_questions"] > 20
    assert summary["true_best_test_score"] > summary["true_seed_test_score"]
    text = "\n".join(summary_lines(summary))
    assert "held-out accuracy, estimated from recorded feedback (simulated models):" in text
    assert "held-out accuracy, TRUE (the world's answer key, used only to report this)" in text
    assert f"{summary['true_best_test_score']:.1%}" in text
    # measuring the TRUE figure recorded no production runs: the store holds the traffic
    from gepa_trace.store.queries import list_runs

    production = list_runs(summary["store"], agent="demo-qa", limit=None)
    assert len(production) == settings.runs


def test_the_guard_would_catch_an_optimization_that_reads_the_answer_key(monkeypatch):
    import gepa_trace.demo.world
    from gepa_trace.demo import questions

    guard = AnswerKeyGuard()
    monkeypatch.setattr(gepa_trace.demo.world, "answer_of",
                        guard.wrap(gepa_trace.demo.world.answer_of))
    guard.progress("[2/5] nightly optimization")
    with pytest.raises(AssertionError, match="answer key"):
        questions(3, seed=0)
