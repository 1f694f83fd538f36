"""Acceptance 3 of issue 3: the seed prompts leave headroom, the hand-written ones do not.

The numbers are those of the simulated world (gepa-sim/task through litellm), the same
that ``python -m gepa_trace.demo accuracy`` prints.
"""

from __future__ import annotations

from gepa_trace.demo import BEST_PROMPTS, SEED_PROMPTS, questions
from gepa_trace.demo.evaluator import accuracy


def test_seed_prompts_leave_headroom_and_best_prompts_reach_90_percent():
    examples = questions(200, seed=0)
    seed, seed_rollouts = accuracy(SEED_PROMPTS, examples)
    best, _ = accuracy(BEST_PROMPTS, examples)
    assert 0.25 <= seed <= 0.50
    assert best >= 0.90
    # The seed fails for several reasons, each a different component's fault, so the
    # optimizer has more than one thing to learn.
    signs = {"first selected passage": "evidence_selector", "second search": "query_writer",
             "names a city": "answerer", "full sentence": "answerer"}
    seen = {sign for r in seed_rollouts if r.score < 1 for sign in signs if sign in r.feedback}
    assert seen == set(signs)


def test_accuracy_command_prints_both_prompt_sets_marked_simulated(capsys):
    from gepa_trace.demo.__main__ import main

    assert main(["accuracy", "--n", "20", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "SEED_PROMPTS" in out and "BEST_PROMPTS" in out
