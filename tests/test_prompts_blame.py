"""`gepa-trace prompts blame` on a real demo run: every line of the best candidate that
is not the seed's names the iteration that wrote it and the examples (production traces)
and feedback records behind it (issue 18, acceptance point 4); the report shows the
same; bad input is one line and exit 3."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from instrumented import instrumentation_shut_down

from gepa_trace.cli import main
from gepa_trace.optimizer import load_run
from gepa_trace.report import render_report
from gepa_trace.store import open_store


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("blame") / "demo"
    with instrumentation_shut_down():
        result = CliRunner().invoke(main, ["demo", "--out", str(out), "--runs", "60",
                                           "--budget-rollouts", "60", "--processes", "1",
                                           "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    store = open_store(summary["store"])
    return summary["store"], summary["run_id"], load_run(store, summary["run_id"])


def blame(*args: str) -> object:
    return CliRunner().invoke(main, ["prompts", "blame", *args])


def instruction_lines(stored, candidate, component):
    return stored.versions[(component, candidate.prompts[component])].instruction.split("\n")


def test_blame_of_the_demo_best_names_an_iteration_and_examples_for_every_changed_line(
        demo_run):
    url, run_id, stored = demo_run
    seed = next(c for c in stored.candidates if c.origin == "seed")
    best = stored.candidates[stored.row.best_candidate_id]
    by_id = {c.id: c for c in stored.candidates}
    changed = 0
    for component in best.prompts:
        result = blame(component, "--run", run_id, "--store", url, "--json")
        assert result.exit_code == 0, result.output
        assert result.stdout.count("\n") == 1
        found = json.loads(result.stdout)
        assert found["version"] == best.prompts[component]
        assert found["candidate_id"] == best.id and found["note"] is None
        lines = found["lines"]
        assert [line["text"] for line in lines] == instruction_lines(stored, best, component)
        origins = {o["candidate"]: o for o in found["origins"]}
        seed_text = instruction_lines(stored, seed, component)
        for line in lines:
            if line["text"] in seed_text and line["candidate"] is None:
                assert line["seed"] == seed.prompts[component]
                continue
            changed += 1
            writer = by_id[line["candidate"]]
            assert line["iteration"] == writer.iteration >= 1
            origin = origins[writer.id]
            assert origin["diagnosis"] == writer.diagnosis
            # what its reflection read: the minibatch, and the parent's validation
            # failures read beside it
            read = set(writer.minibatch) | set(writer.meta.get("reflection_read", []))
            assert origin["examples"] and set(origin["examples"]) <= read
            assert len(origin["traces"]) == len(origin["examples"])
            assert all(re.fullmatch(r"[0-9a-f]{32}", t) for t in origin["traces"])
    assert changed, "the demo's best candidate should differ from its seed"


def test_blame_prints_each_line_git_blame_style_then_each_writers_diagnosis_and_evidence(
        demo_run):
    url, run_id, stored = demo_run
    best = stored.candidates[stored.row.best_candidate_id]
    component = next(c for c in best.prompts
                     if best.prompts[c] != stored.candidates[0].prompts[c])
    result = blame(component, "--run", run_id, "--store", url)
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0].startswith(f"{component} @ {best.prompts[component]}")
    text = instruction_lines(stored, best, component)
    body = out[1:1 + len(text)]
    assert [line.split(" | ", 1)[1] for line in body] == text
    labels = {line.split(" | ", 1)[0].strip() for line in body}
    assert "seed" in labels and any(re.fullmatch(r"it \d+ #\d+", x) for x in labels)
    evidence = [line for line in out if line.startswith("  examples: ")]
    assert evidence and all(re.match(r"  examples: \d+ \(traces [0-9a-f]{8}…", e)
                            for e in evidence)
    assert any(re.match(r"#\d+, iteration \d+: ", line) for line in out)


def test_without_a_version_blame_reads_the_production_alias_else_the_newest_best(demo_run):
    url, _run_id, stored = demo_run
    seed = next(c for c in stored.candidates if c.origin == "seed")
    best = stored.candidates[stored.row.best_candidate_id]
    component = "answerer"
    before = json.loads(blame(component, "--store", url, "--json").stdout)
    assert before["version"] == best.prompts[component]
    promote = CliRunner().invoke(main, ["prompts", "promote", component,
                                        seed.prompts[component], "--store", url])
    assert promote.exit_code == 0, promote.output
    result = blame(component, "--store", url, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    # the demo's seed was observed in production: no run wrote any of its lines
    assert found["version"] == seed.prompts[component] and found["run_id"] is None
    assert all(line["observed"] and line["candidate"] is None for line in found["lines"])
    text = blame(component, "--store", url).stdout.splitlines()
    assert all(line.startswith("seed/observed | ") for line in text[1:-1])
    assert "not produced by an optimization run" in text[-1]


@pytest.mark.parametrize("args, says", [
    (["no-such-component"], "no component 'no-such-component'"),
    (["answerer", "--version", "ffff0000"], "no prompt version 'ffff0000'"),
    (["answerer", "--run", "run-that-never-ran"], "no optimization run 'run-that-never-ran'"),
])
def test_unknown_component_version_or_run_is_one_line_and_exit_3(demo_run, args, says):
    url, _run_id, _stored = demo_run
    result = blame(*args, "--store", url)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr


def test_the_report_links_each_changed_line_of_the_best_to_its_diagnosis(demo_run):
    url, run_id, stored = demo_run
    page = render_report(url, run_id)
    section = re.search(r'<section id="blame">(.*?)</section>', page, re.DOTALL).group(1)
    links = set(re.findall(r'<a href="#diag-(\d+)">it (\d+) #\1</a>', section))
    assert links
    for cid, iteration in links:
        assert stored.candidates[int(cid)].iteration == int(iteration)
        assert f'id="diag-{cid}"' in page
