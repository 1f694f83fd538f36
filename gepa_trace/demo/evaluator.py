"""``AgentEvaluator``: the optimizer's ``Evaluator`` for an agent that runs in process.

It builds the agent for a candidate's prompts (``build_agent(prompts, model=...)``, built
once per distinct prompt set and reused), invokes it on one example, scores the output
with the metric and returns a ``Rollout`` with the per-component records that
``ComponentRecorder`` collected. It never raises for one example: an agent or metric
exception, or a metric value that breaks the contract (``Score.checked`` against
``RolloutContext.score_range``), is a failed rollout, ``Rollout.error`` set and no
feedback, which the optimizer retries and never scores (``optimizer.failures``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from gepa_trace.demo.records import ComponentRecorder
from gepa_trace.errors import BudgetExhausted, MetricContractError
from gepa_trace.optimizer.failures import failed_rollout
from gepa_trace.optimizer.protocols import Example, Rollout, RolloutContext, Score
from gepa_trace.optimizer.rollouts import BuiltOnce
from gepa_trace.prompts import PromptSet


class AgentEvaluator:
    """Runs ``build_agent(prompts)`` on examples and scores them with ``metric``.

    ``model`` (a litellm model string or a chat model) and ``chat_model`` are passed to
    ``build_agent`` when given; ``config`` is extra RunnableConfig for every run
    (callbacks of the caller are kept, the recorder is added).
    """

    def __init__(self, build_agent: Callable[..., Any], metric: Callable[..., Any], *,
                 model: Any = None, chat_model: Any = None, config: dict | None = None,
                 max_cached_agents: int = 64):
        self.build_agent = build_agent
        self.metric = metric
        self.model = model
        self.chat_model = chat_model
        self.config = dict(config or {})
        self._agents = BuiltOnce(self._build, max_cached_agents)  # per prompt versions (PromptSet equality)

    def _build(self, prompts: PromptSet) -> Any:
        kwargs = {}
        if self.model is not None:
            kwargs["model"] = self.model
        if self.chat_model is not None:
            kwargs["chat_model"] = self.chat_model
        return self.build_agent(prompts, **kwargs)

    def agent_for(self, prompts: PromptSet) -> Any:
        return self._agents.get(prompts, prompts)

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext | None = None) -> Rollout:
        recorder = ComponentRecorder()
        config = dict(self.config)
        config["callbacks"] = [*(config.get("callbacks") or []), recorder]
        if context is not None:
            config["metadata"] = {**(config.get("metadata") or {}),
                                  "gepa.run.id": context.run_id,
                                  "gepa.candidate.id": context.candidate_id,
                                  "gepa.purpose": context.purpose,
                                  "gepa.example.id": example.id}
        try:
            agent = self.agent_for(prompts)
            output = agent.invoke(dict(example.inputs), config=config)
        except BudgetExhausted:
            raise  # the run's budget, not this example: the engine stops the batch
        except Exception as exc:  # noqa: BLE001 - one example's failure is an error, not a score
            return dataclasses.replace(failed_rollout(exc, "the agent raised"),
                                       records=recorder.records, llm_calls=recorder.llm_calls)
        low, high = context.score_range if context is not None else (0.0, 1.0)
        try:
            score = Score.checked(self.metric(example, output, recorder.records), low, high)
        except BudgetExhausted:
            raise
        except MetricContractError as exc:
            failure = failed_rollout(exc)
        except Exception as exc:  # noqa: BLE001 - the metric's bug is not the agent's score
            failure = failed_rollout(exc, "the metric raised")
        else:
            return Rollout(score=score.score, feedback=score.feedback, output=output,
                           records=recorder.records, llm_calls=recorder.llm_calls)
        return dataclasses.replace(failure, output=output, records=recorder.records,
                                   llm_calls=recorder.llm_calls)


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
