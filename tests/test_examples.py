"""`gepa-trace examples`: every run the optimizer would consider, with its split or why
it is left out; excluded runs never reach the optimizer; golden runs are validation.

The demo's traffic is recorded once (simulated model, a few seconds); tests that mark
runs work on their own copy of that store. Nothing here depends on how much feedback
the traffic generator gives, only on what it recorded.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from instrumented import instrumentation_shut_down
from sqlalchemy import select

from gepa_trace.cli import main
from gepa_trace.store import EvaluationRow, forget_store, open_store

AGENT = "demo-qa"
SOURCES = ("correction (feedback ", "comment of feedback ", "approved output (feedback ")
OPTIMIZE = ["optimize", "--agent", AGENT, "--entrypoint", "gepa_trace.demo:build_agent",
            "--metric", "feedback", "--reflection-lm", "gepa-sim/reflect",
            "--budget-rollouts", "20", "--no-grow-val", "--json"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The demo's production traffic: (store path, trace ids of its runs)."""
    from gepa_trace.demo.traffic import run_traffic

    path = tmp_path_factory.mktemp("examples") / "store.db"
    url = f"sqlite:///{path}"
    open_store(url, create=True)
    with instrumentation_shut_down():
        ids = run_traffic(80, store=url, seed=7, feedback_rate=0.6)
    forget_store(url)
    return path, ids


@pytest.fixture
def store(recorded, tmp_path):
    """A copy of the recorded store this test may mark."""
    path, _ids = recorded
    copy = tmp_path / "store.db"
    shutil.copy(path, copy)
    url = f"sqlite:///{copy}"
    yield url
    forget_store(url)


def _cli(*args, code=0):
    out = CliRunner().invoke(main, [str(a) for a in args])
    assert out.exit_code == code, (out.output, out.stderr)
    return out


def _listing(store, *args):
    return json.loads(_cli("examples", "--agent", AGENT, "--store", store, "--json",
                           *args).stdout)


def _ids(listing, split):
    return {r["trace_id"] for r in listing["examples"] if r["split"] == split}


def test_examples_json_lists_every_run_with_its_split_and_source_of_expected_answer(
        recorded, store):
    _path, ids = recorded
    listing = _listing(store)
    assert listing["agent"] == AGENT
    listed = [r["trace_id"] for r in listing["examples"] + listing["left_out"]]
    assert sorted(listed) == sorted(ids), "every run once, as an example or left out"
    counts = listing["counts"]
    assert counts == {"train": len(_ids(listing, "train")), "val": len(_ids(listing, "val")),
                      "test": len(_ids(listing, "test")), "left_out": len(listing["left_out"])}
    assert counts["train"] and counts["val"] and counts["test"]
    for row in listing["examples"]:
        assert row["split"] in ("train", "val", "test")
        assert row["inputs"]["question"] and row["output"] is not None
        if row["expected"] is None:
            assert row["expected_source"] == "-" and row["expected_from"] is None
        else:
            assert row["expected_source"].startswith(SOURCES), row
    for row in listing["left_out"]:
        assert row["split"] == "left-out" and row["reason"] and row["detail"]
    # the text table: one line per run on stdout, the counts on stderr
    text = _cli("examples", "--agent", AGENT, "--store", store)
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["TRACE", "ID", "SPLIT"] and len(lines) == 1 + len(ids)
    assert f"{counts['train']} train, {counts['val']} val, {counts['test']} test, " \
           f"{counts['left_out']} left out" in text.stderr
    only_val = _listing(store, "--split", "val")
    assert {r["split"] for r in only_val["examples"]} == {"val"} and not only_val["left_out"]
    assert only_val["counts"] == counts
    assert len(_listing(store, "--limit", "3")["examples"]) == 3


def test_excluded_runs_never_reach_the_optimizer_and_golden_runs_are_validation(
        store, tmp_path):
    before = _listing(store)
    excluded = min(_ids(before, "train"))
    marked_golden = sorted(_ids(before, "test"))[:2]
    file_golden = sorted(_ids(before, "train"))[1:3]
    _cli("examples", "exclude", excluded, "--reason", "a test account", "--store", store)
    _cli("examples", "golden", *marked_golden, "--store", store)
    golden_file = tmp_path / "golden.csv"
    golden_file.write_text("trace_id,note\n" + "".join(f"{t},pinned\n" for t in file_golden))

    listing = _listing(store, "--golden", golden_file)
    assert {r["trace_id"]: r["detail"] for r in listing["left_out"]}[excluded] == \
        "excluded by the user: a test account"
    golden = set(marked_golden) | set(file_golden)
    assert golden <= _ids(listing, "val")
    assert not golden & (_ids(listing, "train") | _ids(listing, "test"))

    summary = json.loads(_cli(*OPTIMIZE, "--golden", golden_file, "--store", store).stdout)
    assert {k: summary["examples"][k] for k in ("train", "val", "test")} == \
        {k: listing["counts"][k] for k in ("train", "val", "test")}
    with open_store(store).read() as conn:
        rows = conn.execute(select(EvaluationRow.__table__)
                            .where(EvaluationRow.__table__.c.run_id == summary["run_id"])).all()
    used = {purpose: {r.example_id for r in rows if r.purpose == purpose}
            for purpose in ("minibatch", "val", "test")}
    assert excluded not in set().union(*used.values())
    assert used["val"] == _ids(listing, "val"), "the seed is scored on all of validation"
    # a minibatch's last place may be a validation example its parent fails
    assert used["minibatch"] <= _ids(listing, "train") | _ids(listing, "val")
    assert used["test"] <= _ids(listing, "test") and used["test"]

    # `include` removes either mark: the runs go back to their hash's split
    _cli("examples", "include", excluded, "--store", store)
    _cli("examples", "include", marked_golden[0], "--store", store)
    after = _listing(store)
    assert excluded in _ids(after, "train") and marked_golden[0] in _ids(after, "test")
    assert marked_golden[1] in _ids(after, "val")


def test_unknown_runs_are_refused_with_one_line_and_exit_3(store, tmp_path):
    unknown = "f" * 32
    for args in (["exclude", unknown], ["golden", unknown], ["include", unknown]):
        out = _cli("examples", *args, "--store", store, code=3)
        assert out.stderr.startswith("Error: no run ") and out.stderr.count("\n") == 1
    # golden with one unknown id marks none of them
    known = _listing(store)["examples"][0]["trace_id"]
    _cli("examples", "golden", known, unknown, "--store", store, code=3)
    rows = _listing(store)["examples"]
    assert next(r["mark"] for r in rows if r["trace_id"] == known) is None

    bad = tmp_path / "golden.txt"
    bad.write_text(f"# golden questions\n{known}\n{unknown}\n")
    out = _cli("examples", "--agent", AGENT, "--store", store, "--golden", bad, code=3)
    assert unknown in out.stderr and "Traceback" not in out.output
    out = _cli(*OPTIMIZE, "--golden", bad, "--store", store, code=3)
    assert unknown in out.stderr
    with open_store(store).read() as conn:
        assert conn.execute(select(EvaluationRow.__table__)).first() is None, "nothing ran"
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"note": 1}\n')
    out = _cli("examples", "--agent", AGENT, "--store", store, "--golden", empty, code=1)
    assert "no trace_id" in out.stderr


def test_examples_needs_a_store_and_an_agent(tmp_path):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    out = _cli("examples", "--agent", AGENT, "--store", missing, code=3)
    assert out.stderr.startswith("Error: no store at")
    assert not (tmp_path / "none.db").exists()
    _cli("examples", "--store", missing, code=2)


def test_golden_file_is_one_id_a_line_or_a_csv_or_jsonl_with_trace_id(tmp_path):
    from gepa_trace.errors import ConfigError
    from gepa_trace.store.marks import golden_ids_in

    a, b = "a" * 32, "B" * 32
    files = {"ids.txt": f"# pinned by the reviewers\n{a}\n\n{b}  # the hard one\n{a}\n",
             "ids.csv": f"note,trace_id\nx,{a}\ny,{b}\n",
             "ids.jsonl": f'{{"trace_id": "{a}"}}\n{{"trace_id": "{b}", "why": 1}}\n'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        assert golden_ids_in(tmp_path / name) == (a, b.lower()), name
    (tmp_path / "bad.csv").write_text(f"id,note\n{a},x\n")
    with pytest.raises(ConfigError, match="no trace_id column"):
        golden_ids_in(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text(f'{{"trace_id": "{a}"}}\nnot json\n')
    with pytest.raises(ConfigError, match="bad.jsonl:2: not valid JSON"):
        golden_ids_in(tmp_path / "bad.jsonl")
