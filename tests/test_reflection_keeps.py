"""A reflection may leave a component alone: with every component reflected on for one
child, an edit a component does not need sinks a child that fixes another one. A kept
instruction is not a new version; a reply that keeps every one gives no child, and that
is no error. The default lookahead follows the budget."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_optimizer_engine import run_toy
from test_optimizer_toys import SEED, RuleReflectionLM

from gepa_trace.lm.sim.reflect import _reflect, offers_keep
from gepa_trace.optimizer import OptimizerConfig
from gepa_trace.optimizer.config import LOOKAHEAD, SMALL_BUDGET
from gepa_trace.optimizer.reflection import DEFAULT_TEMPLATE, KEEP_NOTE


class Keeps:
    """RuleReflectionLM, but the components in ``keep`` answer with their instruction as
    it is."""

    def __init__(self, keep: set[str]):
        self.inner, self.keep = RuleReflectionLM(), keep

    def __call__(self, prompt: str) -> str:
        component = re.search(r'component "(\w+)"', prompt).group(1)
        if component in self.keep:
            current = re.search(r"```\n(.*?)\n```", prompt, re.DOTALL).group(1)
            return f"Diagnosis: not this step's failures.\n\n```\n{current}\n```\n"
        return self.inner(prompt)


def test_a_kept_component_stays_the_parents_version_while_the_others_change():
    result, *_ = run_toy(max_rollouts=150, lm=Keeps({"planner"}), component_selection="all")
    children = [c for c in result.candidates if c.origin == "reflection"]
    assert children
    assert all(c.prompts["planner"] == SEED.versions()["planner"] for c in result.candidates)
    assert any(c.prompts["answerer"] != SEED.versions()["answerer"] for c in children)


def test_a_reflection_that_keeps_every_instruction_proposes_nothing_and_is_no_error():
    result, *_ = run_toy(max_rollouts=60, lm=Keeps({"planner", "answerer"}),
                         component_selection="all")
    assert [c.origin for c in result.candidates] == ["seed"]
    assert result.totals.reflection_errors == 0


def test_the_default_lookahead_is_one_for_a_small_budget_and_an_explicit_one_wins():
    config = OptimizerConfig()
    assert config.for_budget(SMALL_BUDGET).lookahead == 1
    assert config.for_budget(SMALL_BUDGET + 1).lookahead == LOOKAHEAD
    assert config.for_budget(None).lookahead == LOOKAHEAD  # no rollout limit
    assert OptimizerConfig(lookahead=3).for_budget(100).lookahead == 3


def test_our_template_offers_to_keep_and_the_simulated_reflection_takes_it_only_then():
    assert KEEP_NOTE in DEFAULT_TEMPLATE and offers_keep(DEFAULT_TEMPLATE)
    instruction = "Answer the question from the evidence, with only the answer."
    example = ("# Example 1\n## Score\n0\n## Inputs\nquestion: Who founded Vizi Energy?\n"
               "## Output\nunknown\n## Feedback\nthe second search looked up 'Vizi Energy' "
               "instead of the founder, Jonas Zustail, named in the notes\n")

    def replies(offer: bool) -> list[str]:
        import random

        prompt = (f"The component currently uses this instruction:\n```\n{instruction}\n```\n\n"
                  f"```\n{example}```\n" + (KEEP_NOTE if offer else ""))
        return [_reflect([{"role": "user", "content": prompt}], random.Random(n))
                for n in range(40)]

    def kept(reply: str) -> bool:
        return reply.rstrip().endswith(f"```\n{instruction}\n```")

    offered = sum(kept(r) for r in replies(True))
    assert 10 <= offered <= 35  # often, not always (KEEP_RATE)
    assert not any(kept(r) for r in replies(False))
