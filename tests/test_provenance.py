"""Line provenance: every line of every candidate's instructions names where it came
from (the seed, or the iteration and candidate that wrote it, with the examples, traces
and feedback records behind it), through reflection, merge, warm start and resume."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_optimizer_toys import SEED, RuleEvaluator, RuleReflectionLM, world

from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import Example, Optimizer, OptimizerConfig, load_run
from gepa_trace.optimizer.provenance import (
    blame,
    child_lines,
    evidence,
    lines_of,
    merge_provenance,
    seed_lines,
)
from gepa_trace.optimizer.state import Candidate
from gepa_trace.store import open_store


def texts(lines):
    return [line["text"] for line in lines]


def test_lines_kept_verbatim_keep_their_origin_and_new_lines_name_the_candidate():
    seed = seed_lines("You answer questions.\nUse the passages.", "v0")
    child = child_lines(seed, "You answer questions.\nUse the passages.\nAnswer a year only.",
                        candidate_id=3, iteration=2)
    assert texts(child) == ["You answer questions.", "Use the passages.",
                            "Answer a year only."]
    assert child[0] == seed[0] and child[1] == seed[1]
    assert child[2] == {"text": "Answer a year only.", "candidate": 3, "iteration": 2}
    grandchild = child_lines(child, "Answer a year only.\nYou answer questions.\nBe brief.",
                             candidate_id=7, iteration=5)
    # a line moved keeps its origin; a dropped line is gone; a new one is new
    assert [(line["candidate"], line["iteration"]) for line in grandchild] == [
        (3, 2), (None, 0), (7, 5)]
    assert grandchild[1]["seed"] == "v0"


def test_a_lightly_edited_line_is_new_and_remembers_what_it_was():
    parent = seed_lines("You answer questions.\nAnswer with the year only.", "v0")
    child = child_lines(parent, "You answer questions.\nAnswer with the year only, as digits.",
                        candidate_id=12, iteration=7)
    assert child[0]["candidate"] is None
    assert child[1] == {"text": "Answer with the year only, as digits.", "candidate": 12,
                        "iteration": 7, "was": "Answer with the year only."}
    unrelated = child_lines(parent, "You answer questions.\nCite every source by number.",
                            candidate_id=12, iteration=7)
    assert unrelated[1]["candidate"] == 12 and "was" not in unrelated[1]


def test_evidence_lists_examples_traces_and_feedback_records_once():
    examples = [Example("e1", {}, trace_id="t1", feedback=({"id": 17}, {"id": 42})),
                Example("e2", {}, trace_id="t2", feedback=({"id": 42},)),
                Example("e3", {})]
    assert evidence(examples) == {"examples": ["e1", "e2", "e3"], "traces": ["t1", "t2"],
                                  "feedback": [17, 42]}


def test_a_merge_takes_each_components_lines_from_the_parent_that_gave_it():
    seed = Candidate(0, {"a": "a0", "b": "b0"}, meta={"provenance": {
        "a": seed_lines("A", "a0"), "b": seed_lines("B", "b0")}})
    left = Candidate(1, {"a": "a1", "b": "b0"}, parents=(0,), origin="reflection", iteration=1,
                     meta={"provenance": {"a": child_lines(seed_lines("A", "a0"), "A\nA1", 1, 1)}})
    right = Candidate(2, {"a": "a0", "b": "b2"}, parents=(0,), origin="reflection",
                      iteration=2,
                      meta={"provenance": {"b": child_lines(seed_lines("B", "b0"), "Bee", 2, 2)}})
    candidates = [seed, left, right]
    merged = Candidate(3, {"a": "a1", "b": "b2"}, parents=(1, 2), origin="merge", iteration=3,
                       meta={"provenance": merge_provenance(candidates, 1, {"a": 1, "b": 2})})
    candidates.append(merged)
    assert set(merged.meta["provenance"]) == {"b"}  # "a" is the first parent's already
    assert lines_of(candidates, 3, "a") == lines_of(candidates, 1, "a")
    assert lines_of(candidates, 3, "b") == [{"text": "Bee", "candidate": 2, "iteration": 2}]
    assert lines_of(candidates, 3, "b") != lines_of(candidates, 0, "b")


def test_a_run_stored_before_provenance_tells_seed_lines_from_unknown_ones():
    old_run = [Candidate(0, {"a": "a0"}), Candidate(1, {"a": "a1"}, parents=(0,),
                                                     origin="reflection", iteration=1)]
    found = blame(old_run, 1, "a", "a1", "Answer.\nBe brief.", "run-old",
                  seed=("a0", "Answer."))
    assert [(line["candidate"], line["iteration"], line.get("seed")) for line in found.lines] \
        == [(None, 0, "a0"), (None, None, None)]
    assert "did not record" in found.note and not found.origins


def _with_evidence(examples):
    return [dataclasses.replace(e, trace_id=f"trace-{e.id}",
                                feedback=({"id": f"fb-{e.id}", "score": 0.0},))
            for e in examples]


def _optimizer(store, max_rollouts, **config):
    train, val, _test = world()
    config.setdefault("seed", 1)
    return Optimizer(RuleEvaluator(capacity=2), RuleReflectionLM(), SEED,
                     _with_evidence(train), _with_evidence(val),
                     Budget(max_rollouts=max_rollouts), store=store, agent="toy-agent",
                     config=OptimizerConfig.gepa(handle_signals=False, **config))


def _check_every_line_is_attributed(candidates, prompts_of):
    """Each candidate's lines are its instructions' lines; every line not in the seed
    names a candidate of its own lineage that has the evidence."""
    by_id = {c.id: c for c in candidates}
    seed = candidates[0]
    for cand in candidates:
        lineage = {cand.id} | _ancestors(by_id, cand.id)
        for component in cand.prompts:
            lines = lines_of(candidates, cand.id, component)
            assert texts(lines) == prompts_of(cand).instruction(component).split("\n")
            for line in lines:
                if line["candidate"] is None:
                    assert line["seed"] == seed.prompts[component]
                    continue
                origin = by_id[line["candidate"]]
                assert origin.id in lineage and origin.iteration == line["iteration"] >= 1
                assert origin.origin == "reflection" and origin.diagnosis
                found = origin.meta["evidence"]
                assert found["examples"] == list(origin.minibatch)
                assert found["traces"] == [f"trace-{e}" for e in origin.minibatch]
                assert found["feedback"] == [f"fb-{e}" for e in origin.minibatch]


def _ancestors(by_id, cid):
    out, stack = set(), list(by_id[cid].parents)
    while stack:
        p = stack.pop()
        if p not in out:
            out.add(p)
            stack.extend(by_id[p].parents)
    return out


def test_every_line_of_every_candidate_names_its_origin_through_reflection_and_merge(
        sqlite_url):
    store = open_store(sqlite_url)
    opt = _optimizer(store, 260, workers=2, lookahead=4)
    result = opt.run()
    state = opt.state
    assert any(c.origin == "reflection" and c.status == "accepted" for c in result.candidates)
    # this run also merges, and proposes superseded children again under new ids
    assert any(c.origin == "merge" for c in result.candidates)
    assert any("proposed_before_as" in c.meta for c in result.candidates)
    _check_every_line_is_attributed(result.candidates, state.prompt_set)
    best = result.best_candidate_id
    seed_text = {c: SEED.instruction(c).split("\n") for c in SEED}
    new = [line for c in SEED for line in lines_of(result.candidates, best, c)
           if line["text"] not in seed_text[c]]
    assert new and all(line["candidate"] is not None for line in new)
    for merge in (c for c in result.candidates if c.origin == "merge"):
        for component, source in merge.meta["sources"].items():
            assert (lines_of(result.candidates, merge.id, component)
                    == lines_of(result.candidates, source, component))
    # what is stored is what the run had, and it reads back the same
    stored = load_run(store, result.run_id)
    assert [c.meta.get("provenance") for c in stored.candidates] == \
           [c.meta.get("provenance") for c in result.candidates]


def test_a_resumed_run_keeps_the_provenance_of_its_candidates_and_builds_on_it(sqlite_url):
    store = open_store(sqlite_url)
    first = _optimizer(store, 90).run()
    before = load_run(store, first.run_id)
    train, val, _test = world()
    resumed_opt = Optimizer.resume(first.run_id, evaluator=RuleEvaluator(capacity=2),
                                   reflection_lm=RuleReflectionLM(),
                                   train=_with_evidence(train), val=_with_evidence(val),
                                   budget=Budget(max_rollouts=240), store=store)
    second = resumed_opt.run()
    assert len(second.candidates) > len(before.candidates)
    after = load_run(store, first.run_id)
    for old, again in zip(before.candidates, after.candidates, strict=False):
        assert again.meta.get("provenance") == old.meta.get("provenance")
    _check_every_line_is_attributed(after.candidates, resumed_opt.state.prompt_set)


def test_a_warm_started_run_keeps_the_origins_of_the_earlier_run(sqlite_url):
    from gepa_trace.report.blame import load_blame

    store = open_store(sqlite_url)
    earlier = _optimizer(store, 200).run()
    later = _optimizer(store, 40, warm_start_from=earlier.run_id).run()
    warm = [c for c in later.candidates if c.origin == "warm_start"]
    assert warm
    earlier_ids = {c.id: c for c in earlier.candidates}
    attributed = 0
    for cand in warm:
        source = cand.meta["from_candidate"]
        for component in SEED:
            lines = lines_of(later.candidates, cand.id, component)
            old = lines_of(earlier.candidates, source, component)
            assert texts(lines) == texts(old)
            for line, was in zip(lines, old, strict=True):
                assert line["candidate"] == was["candidate"]
                if was["candidate"] is not None:
                    assert line["run"] == earlier.run_id
                    assert earlier_ids[was["candidate"]].iteration == line["iteration"]
        for component in SEED:  # as `prompts blame --run LATER` reads it from the store
            found = load_blame(store, component, cand.prompts[component], later.run_id)
            assert texts(found.lines) == texts(lines_of(later.candidates, cand.id, component))
            for line in found.lines:
                if line["candidate"] is not None:
                    attributed += 1
                    origin = found.origin_of(line)
                    assert origin.run == earlier.run_id and origin.traces
                    assert origin.diagnosis == earlier_ids[line["candidate"]].diagnosis
    assert attributed  # the earlier run's lines, with their writers


def test_blame_follows_a_seed_that_an_earlier_run_wrote_into_that_run(sqlite_url):
    from gepa_trace.report.blame import load_blame, text_lines

    store = open_store(sqlite_url)
    first = _optimizer(store, 200).run()
    train, val, _test = world()
    second = Optimizer(RuleEvaluator(capacity=2), RuleReflectionLM(), first.best_prompts,
                       _with_evidence(train), _with_evidence(val), Budget(max_rollouts=120),
                       store=store, agent="toy-agent",
                       config=OptimizerConfig.gepa(seed=2, handle_signals=False)).run()
    earlier = {c.id: c for c in first.candidates}
    followed = 0
    for component in SEED:
        found = load_blame(store, component, run_id=second.run_id)
        assert found.version == second.best_prompts.versions()[component]
        written_before = lines_of(first.candidates, first.best_candidate_id, component)
        for line in found.lines:
            if line["candidate"] is None:  # the first run's seed: no run wrote it
                assert line["text"] in SEED.instruction(component).split("\n")
                continue
            origin = found.origin_of(line)
            assert origin is not None and origin.traces
            if line.get("run") == first.run_id:  # a line the seed had: written last night
                assert line in [{**w, "run": first.run_id} for w in written_before]
                assert earlier[line["candidate"]].iteration == line["iteration"]
                assert origin.diagnosis == earlier[line["candidate"]].diagnosis
        if any(w["candidate"] is not None and w["text"] in [x["text"] for x in found.lines]
               for w in written_before):
            followed += 1
            assert any(line.get("run") == first.run_id for line in found.lines)
            assert any("*" in row.split(" | ")[0] for row in text_lines(found)[1:])
    assert followed  # the first run's best wrote lines the second run's best kept
