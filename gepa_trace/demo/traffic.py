"""Simulated production traffic: the demo agent answers users' questions under
``gepa_trace.instrument()``, and some users leave feedback the way users do.

For a ``feedback_rate`` fraction of runs the user gives a thumbs up (score 1) or down
(score 0). The verdict follows the truth of the answer (the demo metric), flipped with
probability ``noise``: users misjudge sometimes. A thumbs down comes with a correction
("the answer should be Norland") with probability ``correction_rate``, a thumbs up with
a short thanks sometimes. Everything is decided by ``seed``: the same call records the
same questions and the same feedback.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gepa_trace.demo.agent import AGENT_NAME, SEED_PROMPTS, build_agent
from gepa_trace.demo.metric import metric
from gepa_trace.demo.world import QUESTION_KINDS, make_questions, world
from gepa_trace.optimizer.protocols import Example
from gepa_trace.prompts import PromptSet


def traffic_questions(n: int, seed: int = 0) -> list[Example]:
    """``n`` user questions: distinct ones first, then repeats (users ask alike)."""
    pool_size = len(world(0).companies) * len(QUESTION_KINDS)
    distinct = make_questions(min(n, pool_size), seed=seed)
    rng = random.Random(f"gepa-trace-demo-traffic:{seed}")
    picked = distinct + [rng.choice(distinct) for _ in range(n - len(distinct))]
    return [Example(id=f"traffic-{seed}-{i}", inputs={"question": q.text}, expected=q.answer,
                    meta={"kind": q.kind, "company": q.company})
            for i, q in enumerate(picked)]


def run_traffic(n: int, *, store: Any = None, seed: int = 0, feedback_rate: float = 0.5,
                prompts: PromptSet = SEED_PROMPTS, threads: int = 4,
                model: Any = "gepa-sim/task", chat_model: Any = None, noise: float = 0.1,
                correction_rate: float = 0.4) -> list[str]:
    """Run the agent on ``n`` questions, traced into ``store``; returns the trace ids in
    question order. Feedback is recorded (``record_feedback(..., name="user")``) after
    all runs are flushed. The instrumentation stays active for the caller; a run that
    raises is traced as an error and gets no feedback.
    """
    for name, value in (("feedback_rate", feedback_rate), ("noise", noise),
                        ("correction_rate", correction_rate)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    import gepa_trace as gt

    inst = gt.instrument(store=store, service_name=AGENT_NAME)
    agent = build_agent(prompts, model=model, chat_model=chat_model)
    examples = traffic_questions(n, seed)

    def one(example: Example) -> tuple[str, Any]:
        with gt.agent_run(AGENT_NAME, inputs=dict(example.inputs)) as run:
            try:
                output = agent.invoke(dict(example.inputs))
            except Exception:  # noqa: BLE001 - traced as an error by agent_run; traffic goes on
                output = None
            run.set_outputs(output)
        return str(run.trace_id), output

    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(one, examples))
    inst.force_flush()

    rng = random.Random(f"gepa-trace-demo-feedback:{seed}")
    for example, (trace_id, output) in zip(examples, results):
        if output is None or rng.random() >= feedback_rate:
            continue
        right = metric(example, output).score >= 1.0
        happy = right != (rng.random() < noise)
        comment = None
        if not happy and rng.random() < correction_rate and not right:
            comment = rng.choice(["the answer should be {}", "wrong, the correct answer is {}",
                                  "no. it should be {}"]).format(example.expected)
        elif happy and rng.random() < 0.2:
            comment = rng.choice(["thanks!", "great", "exactly what I needed"])
        gt.record_feedback(trace_id, score=1.0 if happy else 0.0, comment=comment,
                           name="user", store=store)
    return [trace_id for trace_id, _ in results]
