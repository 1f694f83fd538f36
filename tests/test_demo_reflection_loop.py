"""De-risking the optimizer: a plain greedy reflect loop climbs well above the seed.

The loop here is deliberately not the optimizer's (no Pareto fronts, no merge): evaluate
the current prompts on a minibatch of 3, show one component's records and the metric's
feedback to ``gepa-sim/reflect``, take the fenced instruction it proposes, and keep it
if the minibatch sum rises. If this climbs, the world gives the optimizer a gradient.
"""

from __future__ import annotations

import random

from gepa_trace.demo import COMPONENTS, SEED_PROMPTS, build_agent, metric, questions
from gepa_trace.demo.evaluator import AgentEvaluator
from gepa_trace.lm.fenced import extract_fenced
from gepa_trace.optimizer.protocols import Example, Rollout
from gepa_trace.prompts import PromptSet


def reflection_prompt(prompts: PromptSet, component: str, batch: list[Example],
                      rollouts: list[Rollout]) -> str:
    parts = [f"Component `{component}` of an agent uses this instruction:", "```",
             prompts.instruction(component), "```", "",
             "Its calls on a few examples, each with the feedback on the agent's answer:"]
    for i, rollout in enumerate(rollouts, 1):
        parts.append(f"## Example {i}")
        for record in rollout.records.get(component, []):
            parts += ["### Inputs", record.inputs, "### Output", record.output]
        parts += ["### Feedback", f"score {rollout.score:.0f}: {rollout.feedback}", ""]
    parts.append("Say what went wrong, then write the complete improved instruction in a "
                 "fenced block.")
    return "\n".join(parts)


def greedy_loop(iterations: int, seed: int = 0):
    from gepa_trace.lm import LM

    reflect_lm = LM("gepa-sim/reflect")
    evaluator = AgentEvaluator(build_agent, metric)
    train, val = questions(60, seed=101), questions(60, seed=202)
    rng = random.Random(seed)

    def val_score(prompts):
        return sum(evaluator.evaluate(prompts, ex).score for ex in val) / len(val)

    prompts, history, accepted = SEED_PROMPTS, [val_score(SEED_PROMPTS)], 0
    for it in range(iterations):
        component = COMPONENTS[it % len(COMPONENTS)]
        batch = rng.sample(train, 3)
        before = [evaluator.evaluate(prompts, ex) for ex in batch]
        if all(r.score == 1.0 for r in before):
            continue
        new = extract_fenced(reflect_lm(reflection_prompt(prompts, component, batch, before)))
        if not new:
            continue
        child = prompts.with_instruction(component, new)
        after = [evaluator.evaluate(child, ex) for ex in batch]
        if sum(r.score for r in after) > sum(r.score for r in before):
            prompts, accepted = child, accepted + 1
            history.append(val_score(prompts))
            if history[-1] >= 0.9:
                break
    return history, accepted, prompts


def test_greedy_reflection_loop_climbs_well_above_the_seed():
    history, accepted, _prompts = greedy_loop(iterations=45)
    assert history[0] <= 0.5
    assert max(history) >= history[0] + 0.35, history
    assert max(history) >= 0.75, history
    assert 3 <= accepted <= 12
