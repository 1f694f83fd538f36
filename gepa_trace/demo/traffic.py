"""Simulated production traffic: the demo agent answers users' questions under
``gepa_trace.instrument()``, and some users leave feedback the way users do.

The world's truth is used here only, to simulate what users know; the optimization
never sees it (it reads the recorded feedback). Per run, decided by ``seed`` alone (the
same call records the same questions and the same feedback):

- ``feedback_rate`` (default 0.4): the share of runs whose user gives any feedback; most
  runs (60%) get none.
- The user's thumbs up (score 1) or down (score 0) follows the truth of the answer,
  flipped with probability ``noise`` (0.1): users misjudge sometimes.
- A thumbs down on a wrong answer carries, with these probabilities:

  | what                                                      | share | recorded as                          |
  |-----------------------------------------------------------|-------|--------------------------------------|
  | an explicit correction (a user who knows the answer)      | 0.35  | ``expected=<answer>``                |
  | ... of which wrong (a plausible other answer)             | 0.10  | ``expected=<wrong answer>``          |
  | a correction in words ("the answer should be Norland")    | 0.15  | ``comment`` (a recognised phrasing)  |
  | a vague comment ("wrong", "too long", "not what I asked") | 0.30  | ``comment``                          |
  | nothing more                                              | 0.20  | score only                           |

  A thumbs down on a right answer (a misjudgement) carries a vague comment or nothing.
- A thumbs up carries a short thanks 15% of the time.
- ``review_rate`` (default 0.05) of all runs are also checked by a reviewer
  (``source="reviewer"``, ``name="review"``), who always knows the answer: a score by
  the truth, and the right answer as ``expected`` when the run's answer is wrong.
- Each run's root span carries the end user's id as ``user.id`` (OpenInference's name):
  ``poison.user_id``, one ordinary user per run.
- ``poison`` (a ``demo.poison.Poison``, default none): an attacker's payload in a share
  of the runs (question, feedback comment or tool output), each poisoned run with the
  attacker's ``user.id`` and the attacker's thumbs down. The clean runs, their users
  and their feedback are the same as without it.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from gepa_trace.demo.agent import AGENT_NAME, SEED_PROMPTS, build_agent
from gepa_trace.demo.metric import metric
from gepa_trace.demo.poison import Poison, user_id
from gepa_trace.demo.world import MONTHS, QUESTION_KINDS, make_questions, world
from gepa_trace.optimizer.protocols import Example
from gepa_trace.prompts import PromptSet
from gepa_trace.worlds.users import check_rates, review, traced_runs, user_feedback

PHRASINGS = ["the answer should be {}", "Correct answer: {}", "no, the right answer is {}"]
VAGUE = ["wrong", "not what I asked", "that's not right", "useless answer"]
THANKS = ["thanks!", "great", "exactly what I needed"]


def traffic_questions(n: int, seed: int = 0) -> list[Example]:
    """``n`` user questions: distinct ones first, then repeats (users ask alike)."""
    pool_size = len(world(0).companies) * len(QUESTION_KINDS)
    distinct = make_questions(min(n, pool_size), seed=seed)
    rng = random.Random(f"gepa-trace-demo-traffic:{seed}")
    picked = distinct + [rng.choice(distinct) for _ in range(n - len(distinct))]
    return [Example(id=f"traffic-{seed}-{i}", inputs={"question": q.text}, expected=q.answer,
                    meta={"kind": q.kind, "company": q.company})
            for i, q in enumerate(picked)]


def plausible_wrong(example: Example, rng: random.Random, world_seed: int = 0) -> str:
    """An answer a user might wrongly believe: another of the same kind."""
    w = world(world_seed)
    kind, right = example.meta["kind"], str(example.expected)
    if kind == "year" and right.isdigit():
        return str(int(right) + rng.choice([-1, 1]))
    if kind == "month":
        return MONTHS[(MONTHS.index(right) + rng.choice([-1, 1])) % 12]
    pools = {"city": list(w.city_country), "founder": [c.founder for c in w.companies.values()]}
    pool = pools.get(kind, w.countries)
    return rng.choice([x for x in pool if x != right])


def _user_feedback(example: Example, output: Any, rng: random.Random,
                   noise: float) -> dict[str, Any]:
    """One user's feedback on one run (see the module docstring): a long answer also
    draws "too long"."""
    answer = str((output or {}).get("answer") or "")
    return user_feedback(metric(example, output).score >= 1.0, str(example.expected), rng,
                         noise, vague=VAGUE + (["too long"] * 2 if len(answer.split()) > 4
                                               else []),
                         phrasings=PHRASINGS, thanks=THANKS,
                         wrong=lambda r: plausible_wrong(example, r))


def run_traffic(n: int, *, store: Any = None, seed: int = 0, feedback_rate: float = 0.4,
                prompts: PromptSet = SEED_PROMPTS, threads: int = 4,
                model: Any = "gepa-sim/task", chat_model: Any = None, noise: float = 0.1,
                review_rate: float = 0.05, poison: Poison | None = None) -> list[str]:
    """Run the agent on ``n`` questions, traced into ``store``; returns the trace ids in
    question order. Feedback (see the module docstring) is recorded with
    ``record_feedback`` after all runs are flushed. The instrumentation stays active for
    the caller; a run that raises is traced as an error and gets no feedback.
    """
    check_rates(feedback_rate=feedback_rate, noise=noise, review_rate=review_rate)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    import gepa_trace as gt

    examples = traffic_questions(n, seed)
    companies = [str(ex.meta["company"]) for ex in examples]
    poison = poison.aimed(companies) if poison is not None else None
    poisoned = {i: k for k, i in enumerate(poison.runs(companies))} if poison else {}
    users = [poison.attacker(poisoned[i]) if i in poisoned else user_id(i, seed)
             for i in range(len(examples))]
    if poison is not None and poison.where == "input":
        examples = [replace(ex, inputs={**ex.inputs, "question": f"{ex.inputs['question']} "
                                            f"{poison.text}"})
                    if i in poisoned else ex for i, ex in enumerate(examples)]
    gt.instrument(store=store, service_name=AGENT_NAME)
    agent = build_agent(prompts, model=model, chat_model=chat_model, poison=poison)
    results = traced_runs(AGENT_NAME, agent, [ex.inputs for ex in examples], users, threads)

    rng = random.Random(f"gepa-trace-demo-feedback:{seed}")
    for i, (example, (trace_id, output)) in enumerate(zip(examples, results)):
        given = rng.random() < feedback_rate
        reviewed = rng.random() < review_rate
        if output is None:
            continue
        if given:  # drawn for poisoned runs too, so the clean runs' feedback stays the same
            record = _user_feedback(example, output, rng, noise)
            if i not in poisoned:
                gt.record_feedback(trace_id, name="user", source="user", store=store, **record)
        if i in poisoned:  # the attacker makes sure the run is an example
            comment = poison.text if poison and poison.where == "comment" else None
            gt.record_feedback(trace_id, name="user", source="user", store=store, score=0.0,
                               comment=comment)
        if reviewed:
            gt.record_feedback(trace_id, store=store, **review(
                metric(example, output).score >= 1.0, str(example.expected)))
    return [trace_id for trace_id, _ in results]
