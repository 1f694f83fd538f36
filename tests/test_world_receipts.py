"""The expense desk, a second simulated world (extraction then formatting): its seed is
weak and its hand-written prompts are perfect, every trap is learnable from one failing
example's feedback in both reflection layouts (ours and the `gepa` package's), its
answer key stays out of the optimizer's reach, and a short `gepa-trace optimize` on its
recorded traffic improves on the seed."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner
from instrumented import instrumentation_shut_down
from test_store_imports import PACKAGE, _imports, _module_path

from gepa_trace.lm.sim import receipts as sim_receipts
from gepa_trace.lm.sim import reflect as sim_reflect
from gepa_trace.optimizer.reflection import build_prompt, parse_reply, reflection_examples
from gepa_trace.prompts import PromptSet
from gepa_trace.replay.harness import AgentReplay
from gepa_trace.worlds import receipts as world

#: trap -> (component, index of its rule in the hand-written prompts)
RULE_OF = {"subtotal": ("extractor", 0), "month_first": ("extractor", 1),
           "currency_symbol": ("extractor", 2), "processor": ("extractor", 3),
           "extra_words": ("formatter", 0), "comma_decimal": ("formatter", 1),
           "thousands": ("formatter", 2), "accents": ("formatter", 3),
           "two_decimals": ("formatter", 4)}


class NoFlaw(random.Random):
    """An rng whose roll never lands on the reflection's flaws (useless, harmful, drop)."""

    def random(self) -> float:
        return 0.5


def _score(prompts: PromptSet, examples) -> float:
    agent = world.build_agent(prompts)
    return sum(world.metric(ex, agent.invoke(dict(ex.inputs))).score
               for ex in examples) / len(examples)


def test_seed_prompts_score_low_and_the_hand_written_prompts_score_one():
    examples = world.examples(60, seed=0)
    assert 0.1 <= _score(world.SEED_PROMPTS, examples) <= 0.35
    assert _score(world.BEST_PROMPTS, examples) == 1.0


def test_the_oracle_reads_the_truth_back_from_the_receipt_text_alone():
    for receipt in world.receipts(200, seed=1):
        assert world.truth_of(receipt.text).ledger == receipt.ledger
    ex = world.examples(1, seed=1)[0]
    production = type(ex)(id="run", inputs=ex.inputs)  # a recorded run: no expected answer
    assert world.metric(production, {"answer": ex.expected}).score == 1.0


def test_the_oracle_names_the_first_thing_wrong_and_the_right_line():
    ex = next(e for e, r in zip(world.examples(100, seed=0), world.receipts(100, seed=0))
              if "subtotal" in r.traps)
    truth = world.truth_of(ex.inputs["receipt"])
    wrong = ex.expected.replace(f"| {truth.total} |", f"| {truth.subtotal} |")
    score = world.metric(ex, {"answer": wrong})
    assert score.score == 0.0
    assert score.feedback.startswith(f"expected total {truth.total}, got {truth.subtotal} "
                                     "(the subtotal)")
    assert f"the right ledger line is '{ex.expected}'" in score.feedback


def _without_rule(trap: str) -> PromptSet:
    """The hand-written prompts without the one rule that fixes ``trap``."""
    component, index = RULE_OF[trap]
    lines = world.BEST_PROMPTS.instruction(component).splitlines()
    rule = [line for line in lines if line.startswith("- ")][index]
    return world.BEST_PROMPTS.with_instruction(
        component, "\n".join(line for line in lines if line != rule))


def _gepa_layout(instruction: str, item: dict[str, str]) -> str:
    """The `gepa` package's own default reflection prompt for one reflective dataset item."""
    signature = pytest.importorskip("gepa.strategies.instruction_proposal")
    return signature.InstructionProposalSignature.prompt_renderer(
        {"current_instruction_doc": instruction, "dataset_with_feedback": [item]})


def _first_failure(trap: str, prompts: PromptSet, replay: AgentReplay):
    """(example, rollout) of the first receipt with ``trap`` that ``prompts`` get wrong."""
    return next((ex, r) for ex, receipt in zip(world.examples(200, seed=3),
                                               world.receipts(200, seed=3))
                if trap in receipt.traps or trap == "extra_words"
                for r in [replay.evaluate(prompts, ex)] if r.score < 1)


@pytest.mark.parametrize("layout", ["ours", "gepa", "gepa with the whole output"])
@pytest.mark.parametrize("trap", sorted(RULE_OF))
def test_the_reflection_writes_the_rule_that_fixes_a_failing_example(trap, layout):
    component = RULE_OF[trap][0]
    prompts = _without_rule(trap)
    replay = AgentReplay(world.build_agent, world.metric, agent=world.AGENT_NAME)
    ex, rollout = _first_failure(trap, prompts, replay)
    if layout == "ours":
        prompt = build_prompt(component, prompts.instruction(component),
                              reflection_examples(component, [ex], [rollout]), 4000)
    else:
        prompt = _gepa_layout(prompts.instruction(component), {
            "Inputs": ex.inputs["receipt"], "Feedback": rollout.feedback,
            "Generated Outputs": str(rollout.output if "whole" in layout
                                     else rollout.output["answer"])})
    reply = sim_reflect.reply([{"role": "user", "content": prompt}], NoFlaw())
    new = parse_reply(reply).instruction
    assert new.startswith(prompts.instruction(component).split("\n- ")[0])  # rules kept
    assert len(new.splitlines()) == len(prompts.instruction(component).splitlines()) + 1
    assert replay.evaluate(prompts.with_instruction(component, new), ex).score == 1.0


@pytest.mark.parametrize("trap,behaviour", [("month_first", "day_first"),
                                             ("extra_words", "bare_line")])
def test_the_reflection_learns_from_a_users_correction_without_words_for_the_mistake(
        trap, behaviour):
    component = RULE_OF[trap][0]
    prompts = _without_rule(trap)
    replay = AgentReplay(world.build_agent, world.metric, agent=world.AGENT_NAME)
    ex, rollout = _first_failure(trap, prompts, replay)
    feedback = (f"expected '{ex.expected}' (a user's correction), the answer was "
                f"'{rollout.output['answer']}'.")
    prompt = _gepa_layout(prompts.instruction(component), {
        "Inputs": ex.inputs["receipt"], "Generated Outputs": rollout.output["answer"],
        "Feedback": feedback})
    new = parse_reply(sim_reflect.reply([{"role": "user", "content": prompt}], NoFlaw()))
    assert behaviour in sim_receipts.behaviours_of(new.instruction)


def test_the_reflection_sees_no_mistake_in_an_output_that_matches_the_correction():
    ex = world.examples(1, seed=3)[0]
    prompt = _gepa_layout(world.SEED_PROMPTS.instruction("formatter"), {
        "Inputs": ex.inputs["receipt"], "Generated Outputs": ex.expected,
        "Feedback": f"correct: the answer '{ex.expected}' matches a user's correction"})
    reply = sim_reflect.reply([{"role": "user", "content": prompt}], NoFlaw())
    assert "I keep the other rules and add" not in reply


def test_the_reflection_gives_the_same_reply_to_the_same_prompt_and_is_sometimes_wrong():
    from gepa_trace.lm.sim import generate

    prompts = world.SEED_PROMPTS
    replay = AgentReplay(world.build_agent, world.metric, agent=world.AGENT_NAME)
    examples = world.examples(40, seed=5)
    rollouts = [replay.evaluate(prompts, ex) for ex in examples]
    replies = []
    for i in range(0, 39, 3):
        prompt = build_prompt("formatter", prompts.instruction("formatter"), reflection_examples(
            "formatter", examples[i:i + 3], rollouts[i:i + 3]), 4000)
        msgs = [{"role": "user", "content": prompt}]
        replies.append(generate("gepa-sim/reflect", msgs).text)
        assert generate("gepa-sim/reflect", msgs).text == replies[-1]
    useful = [r for r in replies if "I keep the other rules and add" in r]
    assert 0 < len(useful) < len(replies)


def _world_imports_reached_from(root: str) -> dict[str, str]:
    seen: dict[str, str] = {}
    todo = [("gepa_trace." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts)
             .removesuffix(".__init__"),) * 2 for p in (PACKAGE / root).rglob("*.py")]
    while todo:
        name, origin = todo.pop()
        if name not in seen:
            seen[name] = origin
            todo.extend((child, origin) for child in _imports(_module_path(name)))
    # gepa_trace.worlds.users (simulated users' habits, shared with the demo's traffic)
    # holds no answer key
    return {name: origin for name, origin in seen.items()
            if name.startswith("gepa_trace.worlds") and name not in
            ("gepa_trace.worlds", "gepa_trace.worlds.users")}


@pytest.mark.parametrize("room", ["optimizer", "replay", "store", "lm", "cli"])
def test_the_worlds_answer_key_is_not_reachable_from_the_optimizer(room):
    assert not _world_imports_reached_from(room)


def test_the_import_scan_sees_the_world_where_it_is_imported():
    assert "gepa_trace.worlds.receipts" in _world_imports_reached_from("worlds")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    from gepa_trace.store import forget_store

    url = f"sqlite:///{tmp_path_factory.mktemp('receipts') / 'store.db'}"
    with instrumentation_shut_down():
        ids = world.run_traffic(120, store=url, seed=0)
    yield url, ids
    forget_store(url)


def test_traffic_records_users_corrections_as_ledger_lines(recorded):
    from gepa_trace.store.queries import feedback_for_traces, list_runs

    url, ids = recorded
    assert len(list_runs(url, agent=world.AGENT_NAME, limit=500)) == len(ids) == 120
    records = [f for fs in feedback_for_traces(url, ids).values() for f in fs]
    corrections = [f.expected for f in records if f.expected is not None]
    assert 30 <= len(records) <= 90 and corrections
    assert all(sim_receipts.fields_in(c)["currency"].isalpha() for c in corrections)


def test_a_short_optimize_on_recorded_traffic_beats_the_seed_on_validation(recorded):
    from gepa_trace.cli import main

    with instrumentation_shut_down():
        result = CliRunner().invoke(main, [
            "optimize", "--agent", world.AGENT_NAME,
            "--entrypoint", "gepa_trace.worlds.receipts:build_agent",
            "--metric", "gepa_trace.worlds.receipts:metric", "--reflection-lm",
            "gepa-sim/reflect", "--budget-rollouts", "150", "--seed", "0",
            "--store", recorded[0], "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["best_val_score"] > summary["seed_val_score"]
