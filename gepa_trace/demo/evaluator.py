"""``AgentEvaluator``: agent replay (``replay.harness.AgentReplay``) for an agent factory
``build_agent(prompts, model=..., chat_model=...)``, such as the demo agent's.

It is the same evaluator as the optimizer's: the same spans, records, ``trace`` argument
for the metric (``RolloutTrace``) and errors in feedback. With nothing instrumented, its
rollouts are recorded in memory; under an active ``instrument()`` they are recorded into
that store, tagged as rollouts (``replay.recording``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from gepa_trace.optimizer.protocols import Example, Rollout
from gepa_trace.prompts import PromptSet
from gepa_trace.replay.harness import AgentReplay


class AgentEvaluator(AgentReplay):
    """``AgentReplay`` of ``build_agent(prompts)``; ``model`` (a litellm model string or
    a chat model) and ``chat_model`` are passed to ``build_agent`` when given; ``config``
    is extra RunnableConfig for every run (its callbacks are kept, its metadata tags the
    trace). ``agent`` names the agent on its spans (default the demo agent's)."""

    def __init__(self, build_agent: Callable[..., Any], metric: Callable[..., Any], *,
                 model: Any = None, chat_model: Any = None, config: dict | None = None,
                 max_cached_agents: int = 64, agent: str = "demo-qa",
                 instrumentation: Any = None):
        kwargs = {name: value for name, value in (("model", model), ("chat_model", chat_model))
                  if value is not None}
        super().__init__(partial(build_agent, **kwargs) if kwargs else build_agent, metric,
                         agent=agent, instrumentation=instrumentation,
                         keep_agents=max_cached_agents, config=config)


def accuracy(prompts: PromptSet, examples: list[Example], *, model: Any = None,
             chat_model: Any = None, threads: int = 1,
             config: dict | None = None) -> tuple[float, list[Rollout]]:
    """Mean metric score of the demo agent with ``prompts`` on ``examples``, and the
    rollouts (in the order of ``examples``). Raises ``RolloutsFailed`` naming the first
    failed rollout: a failure is not a score of 0 here either."""
    from concurrent.futures import ThreadPoolExecutor

    from gepa_trace.demo.agent import build_agent
    from gepa_trace.demo.metric import metric

    evaluator = AgentEvaluator(build_agent, metric, model=model, chat_model=chat_model,
                               config=config)
    if threads <= 1:
        rollouts = [evaluator.evaluate(prompts, ex) for ex in examples]
    else:
        with ThreadPoolExecutor(threads) as pool:
            rollouts = list(pool.map(lambda ex: evaluator.evaluate(prompts, ex), examples))
    failed = next(((ex, r) for ex, r in zip(examples, rollouts) if r.error), None)
    if failed is not None:
        from gepa_trace.errors import RolloutsFailed

        raise RolloutsFailed(f"example {failed[0].id}: {failed[1].error}")
    mean = sum(r.score for r in rollouts) / len(rollouts) if rollouts else 0.0
    return mean, rollouts
