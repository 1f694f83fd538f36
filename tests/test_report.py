"""The HTML report of an optimization run, built from a real run of the GEPA engine.

The run uses a small deterministic world (the same pattern as the optimizer's toys):
every example needs one rule per component, the evaluator scores the rules an
instruction holds, and the reflection LM adds the rule the feedback asks for most. The
seed prompt holds markup (``<script>``, ``&``) so escaping is tested on real rows.
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import re
from collections import Counter

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from gepa_trace.cli import main
from gepa_trace.errors import NotFoundError
from gepa_trace.lm.budget import Budget
from gepa_trace.optimizer import (
    ComponentRecord,
    Example,
    Optimizer,
    OptimizerConfig,
    Rollout,
    RolloutContext,
)
from gepa_trace.optimizer.persistence import RunRecorder, load_run
from gepa_trace.prompts import PromptSet
from gepa_trace.prompts.gate import paired_bootstrap
from gepa_trace.report import SECTIONS, load_report_data, render_report, write_report
from gepa_trace.report.diff import side_by_side
from gepa_trace.report.svg import nice_ticks
from gepa_trace.store import open_store
from gepa_trace.store.tables import EvaluationRow, OptimizationRunRow, RunEventRow

RULES = {"planner": ["P1", "P2", "P3", "P4"], "answerer": ["A1", "A2", "A3"]}
MARKUP = "Never output <script>alert('x')</script> & never <b>bold</b>."
SEED = PromptSet({
    "planner": [("system", f"You plan the searches for a question. {MARKUP}\nRULE P1"),
                ("human", "{question}")],
    "answerer": [("system", "Answer the question {question} from the evidence.")],
}, agent="report-agent")


def _h(*parts: object) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def examples(n: int, prefix: str, split: str) -> list[Example]:
    return [Example(id=f"{prefix}{i}", inputs={"question": f"question {prefix}{i}?"},
                    expected={c: r[_h(prefix, i, c) % len(r)] for c, r in RULES.items()},
                    split=split) for i in range(n)]


class RuleEvaluator:
    """Score: the fraction of components whose instruction holds the needed rule."""

    def evaluate(self, prompts: PromptSet, example: Example,
                 context: RolloutContext) -> Rollout:
        missing, records = [], {}
        for component, needed in example.expected.items():
            instruction = prompts.instruction(component)
            have = set(re.findall(r"RULE (\w+)", instruction))
            if needed not in have:
                missing.append(f"The {component} should follow rule {needed} <not {needed}!>.")
            records[component] = [ComponentRecord(component, instruction,
                                                  f"rules: {sorted(have)}")]
        return Rollout(score=1 - len(missing) / len(example.expected),
                       feedback=" ".join(missing) or "Correct.", records=records,
                       llm_calls=len(records), tokens=25 * len(records),
                       cost_usd=0.0001 * len(records))


class RuleReflectionLM:
    """Adds the rule the feedback asks for most; now and then a useless edit instead."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        component = re.search(r'component "(\w+)"', prompt).group(1)
        current = re.search(r"```\n(.*?)\n```", prompt, re.DOTALL).group(1)
        asked = Counter(re.findall(rf"The {component} should follow rule (\w+)", prompt))
        missing = sorted((r for r in asked if f"RULE {r}" not in current),
                         key=lambda r: (-asked[r], r))
        if missing and self.calls % 4 != 3:
            new = f"{current}\nRULE {missing[0]}"
            why = f"it never applies rule {missing[0]} (<rule> & feedback agree)"
        else:
            new, why = f"{current}\nBe careful.", "no clear failure"
        return f"Diagnosis: the {component} fails because {why}.\n\n```\n{new}\n```\n"


def run_engine(url: str, *, with_test: bool = True, lookahead: int = 4,
               grow_val: bool = True, workers: int = 2) -> tuple[str, object]:
    """Run the real engine on the rule world into the store at ``url``; optionally score
    the seed and the best on held-out examples the way export does (test evaluations)."""
    store = open_store(url, create=True)
    train, val, test = examples(15, "t", "train"), examples(8, "v", "val"), \
        examples(10, "x", "test")
    result = Optimizer(RuleEvaluator(), RuleReflectionLM(), SEED, train, val,
                       Budget(max_rollouts=220), store=store, agent="report-agent",
                       config=OptimizerConfig.gepa(seed=3, workers=workers, patience=6,
                                              lookahead=lookahead, grow_val=grow_val,
                                              handle_signals=False)).run()
    if with_test:
        recorder = RunRecorder(store, result.run_id, result.agent)
        evaluator = RuleEvaluator()
        for cid in sorted({0, result.best_candidate_id}):
            prompts = PromptSet({c: result.best_prompts.version_of(c) if cid else
                                 SEED.version_of(c) for c in SEED}, agent=result.agent)
            for ex in test:
                rollout = evaluator.evaluate(prompts, ex, RolloutContext(result.run_id, cid,
                                                                         "test"))
                recorder.save_evaluation(cid, ex.id, "test", rollout)
    return result.run_id, result


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'store.db'}"
    run_id, result = run_engine(url)
    return url, run_id, result


@pytest.fixture(scope="module")
def page(engine_run):
    url, run_id, _result = engine_run
    return render_report(url, run_id)


def section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.DOTALL)
    assert match, f"no section {anchor}"
    return match.group(1)


def test_engine_run_improves_so_the_report_has_something_to_show(engine_run):
    _url, _run_id, result = engine_run
    assert result.best_val_score > result.seed_val_score
    assert any(c.status == "rejected" for c in result.candidates)
    assert result.best_candidate_id != 0


def test_report_contains_every_section_with_its_title(page):
    for anchor, title in SECTIONS:
        body = section(page, anchor)
        assert body.startswith("<h2>"), anchor
        assert title.replace("→", "&#8594;") in body or title in body
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") >= 4  # score chart, one front per component, lineage


def test_report_header_names_agent_run_status_and_stop_reason(engine_run, page):
    _url, run_id, result = engine_run
    header = page.split("<main>")[0]
    assert "report-agent" in header and run_id in header
    assert "finished" in header
    assert html.escape(result.stop_reason) in header
    assert "simulated" not in header  # no gepa-sim model in this run


def test_report_has_no_external_urls_and_no_script(page):
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", page)
    assert "@import" not in page and "url(" not in page
    assert "<script" not in page.lower()


def test_report_escapes_prompts_feedback_and_diagnoses(page):
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&amp; never &lt;b&gt;bold&lt;/b&gt;" in page
    assert "<b>bold</b>" not in page
    diagnoses = section(page, "diagnoses")
    assert "(&lt;rule&gt; &amp; feedback agree)" in diagnoses


def test_diff_of_seed_to_best_marks_the_added_rules(engine_run, page):
    _url, _run_id, result = engine_run
    diffs = section(page, "diffs")
    best = result.best_prompts
    for component in SEED:
        if best.versions()[component] != SEED.versions()[component]:
            added = set(re.findall(r"RULE \w+", best.instruction(component))) - set(
                re.findall(r"RULE \w+", SEED.instruction(component)))
            for rule in added:
                assert re.search(rf"<ins>[^<]*{rule.split()[1]}", diffs), rule
            assert best.versions()[component] in diffs


def test_score_points_are_placed_at_the_rollouts_spent_when_validation_finished(engine_run):
    url, run_id, result = engine_run
    data = load_report_data(open_store(url), run_id)
    with open_store(url).session() as session:
        rows = session.execute(select(EvaluationRow).where(EvaluationRow.run_id == run_id)
                               .order_by(EvaluationRow.id)).scalars().all()
    search = [r for r in rows if r.purpose != "test"]
    assert data.rollouts == len(search) == result.totals.rollouts
    for cand in data.candidates:
        if cand.val_score is None:
            assert cand.scored_at is None
            continue
        last_val = max(i for i, r in enumerate(search, 1)
                       if r.candidate_id == cand.id and r.purpose in ("val", "merge"))
        assert cand.scored_at == last_val
    seed = data.candidate(0)
    # the seed's 8 validation rollouts come first, beside iteration 1's minibatches
    # (parent and child, 3 each), which run while the seed is validated
    assert 8 <= seed.scored_at <= 8 + 6
    assert data.history[-1][1] == pytest.approx(result.best_val_score)
    assert [h[2] for h in data.history] == [p.candidate_id for p in result.history]


def test_score_chart_marks_where_validation_grew(engine_run, page):
    _url, _run_id, result = engine_run
    sizes = [p.val_size for p in result.history]
    grew = [(p.rollouts, p.val_size) for prev, p in zip(result.history, result.history[1:])
            if p.val_size > prev.val_size]
    assert grew and sizes[0] == 8, "the run never grew validation: not a growth test"
    chart = section(page, "score-vs-rollouts")
    titles = re.findall(r'<line class="grown"[^>]*><title>validation grew to (\d+) examples '
                        r'after (\d+) rollouts</title>', chart)
    assert [(int(r), int(n)) for n, r in titles] == grew
    assert "validation grew by training examples" in chart


def test_fronts_are_the_engines_fronts(engine_run):
    url, run_id, result = engine_run
    data = load_report_data(open_store(url), run_id)
    versions = load_run(open_store(url), run_id).versions
    for component, front in result.fronts.items():
        shown = {p.version for p in data.fronts[component] if p.on_front}
        assert shown == set(front.versions())
        for member in front.members:
            point = next(p for p in data.fronts[component] if p.version == member.version)
            assert point.chars == sum(len(m["content"]) for m in
                                      versions[(component, member.version)].messages)
            assert member.candidate_id in point.candidate_ids


def test_lineage_shows_accepted_candidates_and_not_rejected_ones(engine_run, page):
    _url, _run_id, result = engine_run
    lineage = section(page, "lineage")
    shown = {int(i) for i in re.findall(r'<text class="n1"[^>]*>#(\d+) ', lineage)}
    assert shown == {c.id for c in result.candidates if c.status == "accepted"}
    best = result.best_candidate_id
    assert re.search(rf'<g class="node [^"]* best"><title>#{best} ', lineage)


def test_diagnoses_are_listed_in_iteration_order_with_verdicts(engine_run, page):
    url, run_id, result = engine_run
    items = re.findall(r'<li class="(accepted|rejected|failed)">.*?<b>iteration (\d+)</b>',
                       section(page, "diagnoses"))
    # children proposed ahead of an accepted one (lookahead) are not verdicts: not listed
    expected = [(c.iteration, 0, c.status, c.id) for c in result.candidates
                if c.origin in ("reflection", "merge") and c.status != "superseded"]
    with open_store(url).session() as session:
        failed = session.execute(select(RunEventRow.payload).where(RunEventRow.run_id == run_id)
                                 .where(RunEventRow.kind == "proposal_failed")
                                 .order_by(RunEventRow.seq)).scalars().all()
    expected += [(json.loads(p)["iteration"], 1, "failed", i) for i, p in enumerate(failed)
                 if not json.loads(p).get("ahead")]
    assert [(status, str(it)) for it, _o, status, _i in sorted(expected)] == items


def test_budget_section_shows_the_run_totals(engine_run, page):
    _url, _run_id, result = engine_run
    budget = section(page, "budget")
    t = result.totals

    def cells(label: str) -> list[str]:
        row = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", budget).group(1)
        return re.findall(r'<td class="num">(.*?)</td>', row)

    # a run the engine ran alone has no command block: its search, against the limits
    assert "The search only" in budget
    assert cells("rollouts (evaluator calls)") == [f"{t.rollouts:,}", "220"]
    assert cells("LLM calls: reflection")[0] == f"{t.llm_calls_by_role['reflection']:,}"
    assert cells("LLM calls: total")[0] == f"{t.llm_calls:,}"
    assert cells("tokens")[0] == f"{t.tokens:,}"
    assert cells("dollars")[0] == f"${t.cost_usd:.4f}"


def test_gate_numbers_are_shown_when_test_evaluations_exist(engine_run, page):
    url, run_id, result = engine_run
    with open_store(url).session() as session:
        rows = session.execute(select(EvaluationRow).where(EvaluationRow.run_id == run_id)
                               .where(EvaluationRow.purpose == "test")).scalars().all()
    by = {(r.candidate_id, r.example_id): r.score for r in rows}
    ids = sorted({e for _c, e in by})
    expected = paired_bootstrap([by[(0, e)] for e in ids],
                                [by[(result.best_candidate_id, e)] for e in ids])
    sig = section(page, "significance")
    assert f"{expected.gain:+.3f}" in sig
    assert f"[{expected.ci_low:+.3f}, {expected.ci_high:+.3f}]" in sig
    assert f"{expected.seed_mean:.3f}" in sig and f"{expected.best_mean:.3f}" in sig
    assert ("significant: the lower bound" in sig) == expected.significant
    assert "not measured" not in sig


def test_gate_is_not_measured_without_test_evaluations(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    run_id, _result = run_engine(url, with_test=False)
    sig = section(render_report(url, run_id), "significance")
    assert "not measured" in sig
    assert "interval" not in sig.split("</p>")[0]


def test_report_of_a_run_with_no_candidates_yet_still_renders(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", create=True)
    with store.write() as conn:
        conn.execute(OptimizationRunRow.__table__.insert().values(
            id="run-empty", agent="a<b>", status="running", config=json.dumps(
                {"task_lm": "gepa-sim/task"}), started_at=1.0e9, totals="{}"))
    page = render_report(store, "run-empty")
    for anchor, _title in SECTIONS:
        section(page, anchor)
    assert "a&lt;b&gt;" in page and "a<b>" not in page
    assert "simulated models" in page  # gepa-sim/ models are labelled
    assert "not measured" in section(page, "significance")


def test_report_works_on_every_store(store_url):
    run_id, result = run_engine(store_url)
    page = render_report(store_url, run_id)
    assert f"#{result.best_candidate_id}" in section(page, "lineage")
    assert "not measured" not in section(page, "significance")


def test_unknown_run_raises_not_found(engine_run, tmp_path):
    url, _run_id, _result = engine_run
    with pytest.raises(NotFoundError, match="no-such-run"):
        write_report(url, "no-such-run", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_cli_report_writes_the_file_and_prints_its_path(engine_run, tmp_path):
    url, run_id, _result = engine_run
    out = tmp_path / "sub" / "report.html"
    res = CliRunner().invoke(main, ["report", run_id, "--out", str(out), "--store", url])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    assert "wrote" in res.stderr and "wrote" not in res.stdout
    assert out.read_text(encoding="utf-8") .startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(main, ["report", run_id, "--out", str(out), "--store", url,
                                    "--json"])
    assert json.loads(res.stdout)["report"] == str(out)


def test_cli_report_unknown_run_is_one_line_and_exit_3(engine_run, tmp_path):
    url, _run_id, _result = engine_run
    res = CliRunner().invoke(main, ["report", "nope", "--out", str(tmp_path / "r.html"),
                                    "--store", url])
    assert res.exit_code == 3
    assert res.stderr.strip().splitlines()[-1] == "Error: no optimization run 'nope' in the store"
    assert "Traceback" not in res.output


def test_cli_report_help_has_an_example():
    res = CliRunner().invoke(main, ["report", "--help"])
    assert res.exit_code == 0 and "Example: gepa-trace report" in res.output


def test_side_by_side_diff_escapes_and_marks_changed_words():
    table = side_by_side("keep <old> & this\nsame", "keep <new> & this\nsame\nadded",
                         "seed", "best")
    assert "<del>old</del>" in table and "<ins>new</ins>" in table
    assert "&lt;" in table and "&amp;" in table and "<old>" not in table
    assert '<tr class="ins">' in table and "<ins>added</ins>" in table
    # tags never straddle rows
    for row in re.findall(r"<tr.*?</tr>", table, re.DOTALL):
        assert row.count("<ins>") == row.count("</ins>")
        assert row.count("<del>") == row.count("</del>")


@given(st.floats(-1e6, 1e6), st.floats(0, 1e6))
def test_ticks_cover_the_range_in_increasing_steps(low, span):
    ticks = nice_ticks(low, low + span)
    assert ticks[0] <= low + 1e-6 and ticks[-1] >= low + span - 1e-6
    assert all(b > a for a, b in itertools.pairwise(ticks))
    assert len(ticks) <= 12


def test_best_so_far_is_derived_from_evaluations_when_totals_carry_no_history(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    # such runs predate lookahead, growing validation and verdicts taken before a
    # child's last rollout: their evaluations are stored in the order they count (one
    # worker: a child's last minibatch rollout cannot finish after its validation's)
    run_id, result = run_engine(url, with_test=False, lookahead=1, grow_val=False,
                                workers=1)
    store = open_store(url)
    with store.write() as conn:  # a run written before the engine kept its history
        table = OptimizationRunRow.__table__
        conn.execute(table.update().where(table.c.id == run_id).values(totals="{}"))
    data = load_report_data(store, run_id)
    assert [(r, pytest.approx(s), c) for r, s, c in data.history] == \
        [(p.rollouts, p.best_score, p.candidate_id) for p in result.history]
    assert 'class="best-line"' in section(render_report(store, run_id), "score-vs-rollouts")
