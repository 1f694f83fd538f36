"""The example agent: its world, its components, its metric and its in-process evaluator."""

from __future__ import annotations

import pytest

from gepa_trace.demo import (
    AGENT_NAME,
    BEST_PROMPTS,
    COMPONENTS,
    SEED_PROMPTS,
    build_agent,
    metric,
    questions,
)
from gepa_trace.demo.evaluator import AgentEvaluator
from gepa_trace.demo.world import World, answer_of, world
from gepa_trace.optimizer.protocols import Evaluator, Example, RolloutContext


def test_world_has_over_200_facts_and_is_generated_from_its_seed():
    w = world(0)
    assert w.fact_count() >= 200
    again = World.generate(0)
    assert [p.text for p in again.passages] == [p.text for p in w.passages]
    assert [p.text for p in World.generate(1).passages] != [p.text for p in w.passages]


def test_retrieval_returns_several_passages_with_distractors():
    w = world(0)
    founder_with_cousin = next(iter(w.cousins))
    found = w.search(founder_with_cousin + " born")
    assert len(found) == 4
    kinds = {p.kind for p in found}
    assert "person" in kinds and "cousin" in kinds


def test_questions_are_distinct_deterministic_examples_with_true_answers():
    qs = questions(200, seed=0)
    assert len({q.inputs["question"] for q in qs}) == 200
    assert [q.inputs for q in qs] == [q.inputs for q in questions(200, seed=0)]
    assert [q.inputs for q in qs] != [q.inputs for q in questions(200, seed=1)]
    w = world(0)
    for q in qs[:20]:
        assert q.expected == answer_of(w, q.meta["kind"], q.meta["company"])


def test_prompt_sets_name_the_agent_and_its_three_components():
    assert SEED_PROMPTS.agent == BEST_PROMPTS.agent == AGENT_NAME == "demo-qa"
    assert set(SEED_PROMPTS) == set(BEST_PROMPTS) == set(COMPONENTS)
    assert len(COMPONENTS) >= 3


def _country_question() -> Example:
    w = world(0)
    for q in questions(200, seed=0):
        if q.meta["kind"] == "country" and w.founder_of(q.meta["company"]).birthplace_known:
            return q
    raise AssertionError("no country question")


def test_metric_says_the_answer_names_a_city_instead_of_the_country():
    q = _country_question()
    founder = world(0).founder_of(q.meta["company"])
    evidence = [next(p.text for p in world(0).passages if p.kind == "company"
                     and p.about == q.meta["company"]),
                next(p.text for p in world(0).passages if p.kind == "person"
                     and p.about == founder.name)]
    out = {"answer": founder.city, "queries": [q.meta["company"], founder.name + " born"],
           "evidence": evidence}
    score = metric(q, out, None)
    assert score.score == 0.0
    assert "expected the country" in score.feedback and "names a city" in score.feedback
    sentence = dict(out, answer=f"The founder was born in {founder.country}.")
    assert "full sentence, expected only the name" in metric(q, sentence, None).feedback
    assert metric(q, dict(out, answer=founder.country), None).score == 1.0


def test_metric_scores_questions_from_traces_without_an_expected_answer():
    q = _country_question()
    bare = Example(id="t", inputs=q.inputs)  # as read back from a production trace
    assert metric(bare, {"answer": q.expected}, None).score == 1.0
    unknown = Example(id="u", inputs={"question": "Who is it?"}, expected="Ada")
    assert metric(unknown, {"answer": "Ada"}, None).score == 1.0
    assert metric(Example(id="v", inputs={"question": "Who?"}), "x", None).score == 0.0


def test_agent_runs_its_components_through_the_litellm_chat_model():
    evaluator = AgentEvaluator(build_agent, metric)
    assert isinstance(evaluator, Evaluator)
    q = _country_question()
    rollout = evaluator.evaluate(BEST_PROMPTS, q, RolloutContext("run-1", 1, "val"))
    assert rollout.score == 1.0 and rollout.output["answer"] == q.expected
    assert set(rollout.records) == set(COMPONENTS)
    assert len(rollout.records["query_writer"]) == 2  # one per hop
    assert rollout.llm_calls == 5
    answerer = rollout.records["answerer"][0]
    assert q.inputs["question"] in answerer.inputs and "Evidence:" in answerer.inputs
    assert "give the country, not the city" in answerer.inputs  # the rendered system message
    assert answerer.output == q.expected
    selector = rollout.records["evidence_selector"][0]
    assert "Passages:" in selector.inputs and "Passages:" not in answerer.inputs


def test_seed_and_best_prompts_give_different_answers_to_the_same_question():
    q = _country_question()
    seed = build_agent(SEED_PROMPTS).invoke(dict(q.inputs))
    best = build_agent(BEST_PROMPTS).invoke(dict(q.inputs))
    assert best["answer"] == q.expected != seed["answer"]


def test_evaluator_never_raises_for_one_example_and_never_scores_a_failure():
    def broken_agent(prompts, **kwargs):
        raise RuntimeError("cannot build")

    rollout = AgentEvaluator(broken_agent, metric).evaluate(SEED_PROMPTS, _country_question())
    assert rollout.error == "the agent raised RuntimeError: cannot build"
    assert rollout.feedback == ""  # an exception is not the metric's feedback

    def bad_metric(example, output, trace):
        raise ValueError("metric bug")

    rollout = AgentEvaluator(build_agent, bad_metric).evaluate(SEED_PROMPTS, _country_question())
    assert rollout.error == "the metric raised ValueError: metric bug"
    assert rollout.feedback == ""
    assert set(rollout.records) == set(COMPONENTS)  # the run itself was recorded


def test_build_agent_accepts_a_chat_model_object():
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    fake = FakeListChatModel(responses=["Q1", "P1", "Q2", "P2", "Norland"])
    out = build_agent(SEED_PROMPTS, chat_model=fake).invoke({"question": "Who founded X?"})
    assert out["answer"] == "Norland" and out["queries"] == ["Q1", "Q2"]
    out = build_agent(SEED_PROMPTS, model=FakeListChatModel(responses=["a"] * 5)).invoke(
        {"question": "Who founded X?"})
    assert out["answer"] == "a"


def test_build_agent_refuses_a_prompt_set_without_its_components():
    from gepa_trace.errors import ConfigError
    from gepa_trace.prompts import PromptSet

    with pytest.raises(ConfigError, match="answerer"):
        build_agent(PromptSet({"query_writer": "x", "evidence_selector": "y"}))


def test_rollouts_of_one_candidate_run_together_share_one_build_of_its_agent():
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    builds, lock = [], threading.Lock()

    def counted(prompts, **kwargs):
        with lock:
            builds.append(1)
        time.sleep(0.05)
        return build_agent(prompts, **kwargs)

    evaluator = AgentEvaluator(counted, metric)
    examples = questions(6, seed=5)
    with ThreadPoolExecutor(6) as pool:
        rollouts = list(pool.map(lambda q: evaluator.evaluate(BEST_PROMPTS, q), examples))
    assert all(r.error is None for r in rollouts) and len(builds) == 1
    evaluator.evaluate(SEED_PROMPTS, examples[0])
    assert len(builds) == 2  # another candidate, another agent
