"""Agent replay on a real LangChain agent under real instrumentation."""

from typing import Any

import pytest
import sqlalchemy as sa
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableLambda

import gepa_trace as gt
from gepa_trace.optimizer.protocols import Example, RolloutContext, Score
from gepa_trace.prompts import PromptSet
from gepa_trace.replay.harness import AgentReplay
from gepa_trace.store import open_store


class ShoutingModel(BaseChatModel):
    """Answers with the last message upper-cased, prefixed by the system prompt's first word."""

    @property
    def _llm_type(self) -> str:
        return "shouting"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:
        system = next((m.content for m in messages if m.type == "system"), "")
        if "EXPLODE" in messages[-1].content:
            raise RuntimeError("model refused")
        text = f"{system.split()[0] if system else ''} {messages[-1].content.upper()}".strip()
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])


def build_agent(prompts: PromptSet):
    model = ShoutingModel()
    plan = prompts["planner"] | model
    answer = prompts["answerer"] | model
    return (RunnableLambda(lambda x: {"question": x["question"],
                                      "plan": plan.invoke({"question": x["question"]}).content})
            | RunnableLambda(lambda x: {"answer": answer.invoke(x).content}))


SEED = PromptSet({"planner": [("system", "Plan: think first."), ("human", "{question}")],
                  "answerer": [("system", "Answer: be brief."),
                               ("human", "Plan: {plan}\nQuestion: {question}")]}, agent="shout")


def metric(example, output, trace):
    ok = output["answer"].startswith("Answer:")
    return Score(1.0 if ok else 0.0, "fine" if ok else "the answer must start with Answer:")


@pytest.fixture
def inst(sqlite_url):
    handle = gt.instrument(store=sqlite_url, service_name="shout")
    yield handle
    handle.shutdown()


def test_rollout_records_each_component_from_its_own_spans(inst, sqlite_url):
    replay = AgentReplay(build_agent, metric, agent="shout", instrumentation=inst)
    example = Example(id="e1", inputs={"question": "where is paris"})
    rollout = replay.evaluate(SEED, example, RolloutContext("run-1", 0, "minibatch"))
    assert rollout.score == 1.0 and rollout.error is None
    assert set(rollout.records) == {"planner", "answerer"}
    planner = rollout.records["planner"][0]
    assert "Plan: think first." in planner.inputs and "where is paris" in planner.inputs
    assert planner.output == "Plan: WHERE IS PARIS"
    assert "Answer: be brief." not in planner.inputs
    assert "Plan: WHERE IS PARIS" in rollout.records["answerer"][0].inputs
    assert rollout.llm_calls == 2
    inst.force_flush()
    store = open_store(sqlite_url)
    with store.read() as conn:
        tagged = conn.execute(sa.text("SELECT count(*) FROM spans WHERE run_id = 'run-1' "
                                      "AND trace_id = :t"), {"t": rollout.trace_id}).scalar()
    assert tagged >= 5, "every span of the rollout is stored, tagged with the run"


def test_an_agent_failure_is_an_error_never_feedback(inst):
    replay = AgentReplay(build_agent, metric, agent="shout", instrumentation=inst)
    rollout = replay.evaluate(SEED, Example(id="e2", inputs={"question": "EXPLODE"}),
                              RolloutContext("run-1", 0, "val"))
    assert rollout.error == "the agent raised RuntimeError: model refused"
    assert rollout.feedback == ""  # the reflection LM never reads it as the metric's verdict
    assert rollout.trace_id and rollout.records  # what the run did is still there


@pytest.mark.parametrize("value, says", [
    ("x", "MetricContractError: the metric returned str 'x'"),
    (7.0, "MetricContractError: the metric returned score 7.0, outside the score range"),
    (KeyError("expected"), "the metric raised KeyError: 'expected'")])
def test_a_metric_that_raises_or_breaks_its_contract_gives_an_error_not_a_score(inst, value,
                                                                              says):
    def bad_metric(example, output, trace):
        if isinstance(value, Exception):
            raise value
        return value

    replay = AgentReplay(build_agent, bad_metric, agent="shout", instrumentation=inst)
    rollout = replay.evaluate(SEED, Example(id="e4", inputs={"question": "hi"}),
                              RolloutContext("run-1", 0, "val"))
    assert says in rollout.error and rollout.feedback == ""
    assert rollout.permanent == (not isinstance(value, Exception))
    # on the run's own scale, 7.0 is a score
    if value == 7.0:
        scaled = replay.evaluate(SEED, Example(id="e4", inputs={"question": "hi"}),
                                 RolloutContext("run-1", 0, "val", (0.0, 10.0)))
        assert scaled.error is None and scaled.score == 7.0


def test_a_changed_prompt_changes_the_rollout(inst):
    replay = AgentReplay(build_agent, metric, agent="shout", instrumentation=inst)
    child = SEED.with_instruction("answerer", "Reply: be brief.")
    rollout = replay.evaluate(child, Example(id="e3", inputs={"question": "hi"}),
                              RolloutContext("run-1", 1, "minibatch"))
    assert rollout.score == 0.0 and "must start with Answer:" in rollout.feedback
    assert "Reply: be brief." in rollout.records["answerer"][0].inputs


def test_rollouts_of_a_new_candidate_started_together_build_its_agent_once(inst):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    builds, lock = [], threading.Lock()

    def slow_build(prompts):
        with lock:
            builds.append(prompts.versions())
        time.sleep(0.05)  # long enough for every rollout to ask while it builds
        return build_agent(prompts)

    replay = AgentReplay(slow_build, metric, agent="shout", instrumentation=inst)
    examples = [Example(id=f"e{i}", inputs={"question": f"q{i}"}) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        rollouts = list(pool.map(lambda e: replay.evaluate(
            SEED, e, RolloutContext("run-1", 0, "val")), examples))
    assert [r.score for r in rollouts] == [1.0] * 8
    assert len(builds) == 1


def test_a_failed_agent_build_fails_the_rollouts_waiting_for_it_and_is_tried_again(inst):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    attempts = []
    gate = threading.Event()

    def flaky_build(prompts):
        attempts.append(1)
        if len(attempts) == 1:
            gate.wait(1.0)
            raise ValueError("no such tool")
        return build_agent(prompts)

    replay = AgentReplay(flaky_build, metric, agent="shout", instrumentation=inst)
    examples = [Example(id=f"e{i}", inputs={"question": f"q{i}"}) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(replay.evaluate, SEED, e, RolloutContext("run-1", 0, "val"))
                   for e in examples]
        time.sleep(0.1)
        gate.set()
        failed = [f.result() for f in futures]
    assert all("no such tool" in r.error and r.feedback == "" for r in failed)
    assert len(attempts) == 1
    again = replay.evaluate(SEED, examples[0], RolloutContext("run-1", 0, "val"))
    assert again.score == 1.0 and len(attempts) == 2
