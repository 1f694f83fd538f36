"""Reading captured runs: the queries behind `traces`, `traces show`, `components`, and
the commands themselves, on SQLite and PostgreSQL.

``write_run`` builds the spans our LangChain instrumentation writes for one run of a
two-component agent (planner -> tool -> answerer), with deterministic ids and clocks.
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import event

from gepa_trace.cli import main
from gepa_trace.prompts.templates import template_version
from gepa_trace.store import open_store
from gepa_trace.store.components import list_components
from gepa_trace.store.feedback import record_feedback
from gepa_trace.store.queries import get_trace, list_runs
from gepa_trace.store.spans import write_spans

AGENT = "support-agent"
NOW = time.time()
PLANNER_V1 = [{"role": "system", "content": "Plan the steps to answer."},
              {"role": "human", "content": "{question}"}]
PLANNER_V2 = [{"role": "system", "content": "Plan carefully; name the country."},
              {"role": "human", "content": "{question}"}]
ANSWERER = [{"role": "system", "content": "Answer using the plan."},
            {"role": "human", "content": "{plan}\n{question}"}]
# versions are their templates' hashes (a span whose version is not is flagged)
P1, P2, A1 = (template_version(t) for t in (PLANNER_V1, PLANNER_V2, ANSWERER))


def trace_id_of(n: int) -> str:
    return f"{n:08x}4bf92f3577b34da6a3ce929d"


def write_run(store, n: int, **kwargs) -> str:
    """Store the spans of run ``n`` (see ``run_spans``); returns its trace id."""
    write_spans(store, run_spans(n, **kwargs))
    return trace_id_of(n)


def run_spans(n: int, *, agent: str = AGENT, hours_ago: float = 0.0,
              planner: list | None = None, planner_version: str = P1,
              status: str = "OK", run_id: str | None = None) -> list[dict]:
    """The span dicts of run ``n``. Children start in the order planner, tool, answerer,
    but are listed shuffled (as exporter batches arrive)."""
    trace_id = trace_id_of(n)
    t0 = int((NOW - hours_ago * 3600) * 1e9)
    ms = 1_000_000

    def span(k, parent, name, kind, start, end, **attrs):
        attributes = {"openinference.span.kind": kind, **attrs}
        if run_id:
            attributes["gepa.run.id"] = run_id
        return {"trace_id": trace_id, "span_id": f"{n:08x}{k:08x}",
                "parent_span_id": f"{n:08x}{parent:08x}" if parent else None, "name": name,
                "kind": "INTERNAL", "start_ns": t0 + start * ms, "end_ns": t0 + end * ms,
                "status_code": status if k == 1 else "OK", "status_message": None,
                "attributes": attributes, "events": [], "resource": {"service.name": "svc"}}

    template = json.dumps(planner or PLANNER_V1)
    question = f"Which country is city {n} in?"
    spans = [
        span(1, None, agent, "AGENT", 0, 2000, **{"gepa.agent": agent, "input.value": question,
                                                   "output.value": f"Country {n}"}),
        span(7, 5, "ChatModel", "LLM", 1210, 1900, **{
            "gepa.component": "answerer", "gepa.prompt.version": A1,
            "gepa.prompt.template": json.dumps(ANSWERER), "llm.model_name": "gpt-test",
            "llm.token_count.prompt": 200, "llm.token_count.completion": 50}),
        span(2, 1, "planner", "CHAIN", 10, 800, **{"gepa.component": "planner"}),
        span(3, 2, "ChatPromptTemplate", "PROMPT", 20, 30, **{
            "gepa.component": "planner", "gepa.prompt.version": planner_version,
            "gepa.prompt.template": template}),
        span(4, 2, "ChatModel", "LLM", 40, 790, **{
            "gepa.component": "planner", "gepa.prompt.version": planner_version,
            "gepa.prompt.template": template, "llm.model_name": "gpt-test",
            "llm.token_count.prompt": 120, "llm.token_count.completion": 30}),
        span(6, 1, "lookup_city", "TOOL", 900, 1000, **{"tool.name": "lookup_city"}),
        span(5, 1, "answerer", "CHAIN", 1200, 1950, **{"gepa.component": "answerer"}),
    ]
    return spans


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, args, store_url):
    return runner.invoke(main, [*args, "--store", store_url])


# ---------------------------------------------------------------- library


def test_list_runs_returns_roots_newest_first_with_totals_and_feedback(store_url):
    store = open_store(store_url)
    old = write_run(store, 1, hours_ago=2)
    new = write_run(store, 2, hours_ago=1)
    record_feedback(old, score=0.0, comment="wrong country", store=store)
    record_feedback(old, score=1.0, name="judge", source="llm-judge", store=store)
    runs = list_runs(store, agent=AGENT)
    assert [r.trace_id for r in runs] == [new, old]
    first = runs[1]
    assert (first.span_count, first.llm_calls, first.input_tokens, first.output_tokens) == (
        7, 2, 320, 80)
    assert first.input == "Which country is city 1 in?"
    assert first.duration_ms == pytest.approx(2000)
    assert [f.comment for f in first.feedback] == ["wrong country", None]
    assert first.score == pytest.approx(0.5)
    assert runs[0].feedback == () and runs[0].score is None


def test_list_runs_filters_by_agent_feedback_time_limit_and_rollouts(store_url):
    store = open_store(store_url)
    a = write_run(store, 1, hours_ago=30)
    b = write_run(store, 2, hours_ago=3)
    write_run(store, 3, hours_ago=1, agent="other-agent")
    rollout = write_run(store, 4, hours_ago=0.5, run_id="run-1")
    record_feedback(a, label="bad", store=store)
    ids = lambda runs: [r.trace_id for r in runs]
    assert ids(list_runs(store, agent=AGENT)) == [b, a]
    assert ids(list_runs(store, agent=AGENT, since=NOW - 24 * 3600)) == [b]
    assert ids(list_runs(store, agent=AGENT, until=NOW - 24 * 3600)) == [a]
    assert ids(list_runs(store, agent=AGENT, only_with_feedback=True)) == [a]
    assert ids(list_runs(store, agent=AGENT, limit=1)) == [b]
    assert ids(list_runs(store, agent=AGENT, newest_first=False, limit=None)) == [a, b]
    assert len(list_runs(store)) == 3
    assert ids(list_runs(store, optimization_run_id="run-1")) == [rollout]
    assert rollout in ids(list_runs(store, include_rollouts=True))


def test_list_runs_queries_do_not_grow_with_the_number_of_runs(sqlite_url):
    store = open_store(sqlite_url)
    for n in range(1, 31):
        trace_id = write_run(store, n, hours_ago=n / 10)
        record_feedback(trace_id, score=n / 30, store=store)
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        list_runs(store, agent=AGENT, limit=3)
        few = len(statements)
        statements.clear()
        runs = list_runs(store, agent=AGENT, limit=30)
        many = len(statements)
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert len(runs) == 30 and all(len(r.feedback) == 1 for r in runs)
    assert many == few <= 3


def test_get_trace_orders_spans_depth_first_by_start_time(store_url):
    store = open_store(store_url)
    trace_id = write_run(store, 1)
    record_feedback(trace_id, score=0.0, comment="wrong country", store=store)
    trace = get_trace(store, trace_id)
    assert [(s.depth, s.name, s.component) for s in trace.spans] == [
        (0, AGENT, None),
        (1, "planner", "planner"),
        (2, "ChatPromptTemplate", "planner"),
        (2, "ChatModel", "planner"),
        (1, "lookup_city", None),
        (1, "answerer", "answerer"),
        (2, "ChatModel", "answerer"),
    ]
    assert trace.agent == AGENT
    assert (trace.input_tokens, trace.output_tokens) == (320, 80)
    assert [f.comment for f in trace.feedback] == ["wrong country"]


def test_get_trace_accepts_an_unambiguous_prefix(store_url):
    from gepa_trace.errors import ConfigError, NotFoundError

    store = open_store(store_url)
    write_run(store, 1)
    write_run(store, 2)
    full = trace_id_of(1)  # 000000014bf9...
    assert get_trace(store, full[:8]).trace_id == full
    assert get_trace(store, full[:8].upper() + " ").trace_id == full
    with pytest.raises(ConfigError, match="ambiguous"):
        get_trace(store, full[:7])
    with pytest.raises(NotFoundError):
        get_trace(store, "ffffffff")
    with pytest.raises(NotFoundError):  # too short to be a prefix: taken as a whole id
        get_trace(store, full[:5])


def test_get_trace_shows_orphan_spans_of_a_partial_trace(store_url):
    store = open_store(store_url)
    trace_id = write_run(store, 1)
    from sqlalchemy import text

    with store.write() as conn:  # the root and the planner were never delivered
        conn.execute(text("DELETE FROM spans WHERE span_id IN (:a, :b)"),
                     {"a": f"{1:08x}{1:08x}", "b": f"{1:08x}{2:08x}"})
    trace = get_trace(store, trace_id)
    assert len(trace.spans) == 5
    assert [s.name for s in trace.spans if s.depth == 0] == [
        "ChatPromptTemplate", "ChatModel", "lookup_city", "answerer"]


def test_components_count_llm_calls_per_version(store_url):
    store = open_store(store_url)
    for n in range(1, 4):
        write_run(store, n, hours_ago=10 - n)
    for n in range(4, 6):
        write_run(store, n, hours_ago=5 - n, planner=PLANNER_V2, planner_version=P2)
    write_run(store, 9, agent="other-agent", planner_version=P1)
    found = {c.name: c for c in list_components(store, agent=AGENT)}
    assert set(found) == {"planner", "answerer"}
    planner = found["planner"]
    assert planner.calls == 5
    assert [(v.version, v.calls) for v in planner.versions] == [(P2, 2), (P1, 3)]
    assert planner.versions[0].template == PLANNER_V2
    assert planner.versions[0].last_seen > planner.versions[1].last_seen
    assert found["answerer"].calls == 5
    everyone = {c.name: c for c in list_components(store)}
    assert everyone["planner"].calls == 6


# ---------------------------------------------------------------- CLI


def test_traces_json_parses_and_includes_feedback(store_url, runner):
    store = open_store(store_url)
    rated = write_run(store, 1, hours_ago=2)
    write_run(store, 2, hours_ago=1)
    record_feedback(rated, score=0.0, comment="wrong country", store=store)
    result = invoke(runner, ["traces", "--agent", AGENT, "--json"], store_url)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [d["trace_id"] for d in data] == [trace_id_of(2), rated]
    assert data[1]["feedback"][0]["comment"] == "wrong country"
    assert data[1]["score"] == 0.0
    assert data == [r.to_dict() for r in list_runs(store, agent=AGENT, limit=20,
                                                    preview_chars=None)]


def test_traces_table_lists_runs_with_feedback_score(store_url, runner):
    store = open_store(store_url)
    trace_id = write_run(store, 1)
    record_feedback(trace_id, score=0.25, store=store)
    result = invoke(runner, ["traces"], store_url)
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["TRACE", "ID", "AGENT", "STARTED", "DURATION", "STATUS", "SPANS",
                              "TOKENS", "SCORE", "(N)", "INPUT"]
    assert row.startswith(trace_id) and AGENT in row and "0.25 (1)" in row


def test_traces_since_leaves_out_older_runs(store_url, runner):
    store = open_store(store_url)
    old = write_run(store, 1, hours_ago=48)
    new = write_run(store, 2, hours_ago=2)
    result = invoke(runner, ["traces", "--since", "24h", "--json"], store_url)
    assert result.exit_code == 0, result.output
    assert [d["trace_id"] for d in json.loads(result.stdout)] == [new]
    result = invoke(runner, ["traces", "--since", "3d", "--json"], store_url)
    assert [d["trace_id"] for d in json.loads(result.stdout)] == [new, old]


def test_traces_show_prints_the_tree_in_order_with_components(store_url, runner):
    store = open_store(store_url)
    trace_id = write_run(store, 1)
    record_feedback(trace_id, score=0.0, label="wrong", comment="wrong country", store=store)
    result = invoke(runner, ["traces", "show", trace_id], store_url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}  agent {AGENT}")
    tree = lines[2:9]
    assert lines[1].split() == ["SPAN", "TYPE", "COMPONENT", "MODEL", "DURATION", "TOKENS",
                                "STATUS"]
    assert tree[0].startswith(AGENT + " ") and " agent " in tree[0]
    names = [line.rstrip() for line in tree]
    assert names[1].startswith("  planner ") and "planner" in names[1].split()[2]
    assert names[2].startswith("    ChatPromptTemplate") and f"planner@{P1}" in names[2]
    assert names[3].startswith("    ChatModel") and f"planner@{P1}" in names[3]
    assert "120/30 tok" in names[3] and "gpt-test" in names[3] and "750 ms" in names[3]
    assert names[4].startswith("  lookup_city") and " tool " in names[4]
    assert names[5].startswith("  answerer")
    assert names[6].startswith("    ChatModel") and f"answerer@{A1}" in names[6]
    rest = "\n".join(lines[9:])
    assert "feedback:" in rest and "score=0" in rest and "label=wrong" in rest
    assert "wrong country" in rest


def test_traces_show_json_is_the_library_trace(store_url, runner):
    store = open_store(store_url)
    trace_id = write_run(store, 1)
    result = invoke(runner, ["traces", "show", trace_id, "--json"], store_url)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data.pop("flagged_spans") == {}
    assert data == json.loads(json.dumps(get_trace(store, trace_id).to_dict()))
    assert [s["name"] for s in data["spans"]][:3] == [AGENT, "planner", "ChatPromptTemplate"]


def test_traces_store_option_before_show_is_used(sqlite_url, runner, monkeypatch, tmp_path):
    trace_id = write_run(open_store(sqlite_url), 1)
    monkeypatch.setenv("GEPA_TRACE_STORE", f"sqlite:///{tmp_path / 'other.db'}")
    result = runner.invoke(main, ["traces", "--store", sqlite_url, "show", trace_id])
    assert result.exit_code == 0, result.output
    assert trace_id in result.stdout


def test_unknown_trace_id_exits_3_with_one_line(store_url, runner):
    open_store(store_url)
    result = invoke(runner, ["traces", "show", "f" * 32], store_url)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert f"no trace {'f' * 32}" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("url, exit_code, message", [
    ("not a url", 1, "Error: store URL"), ("mysql://u@h/db", 1, "Error: store URL"),
    # a file in a directory that does not exist is a missing store like any other
    ("sqlite:////no/such/dir/x.db", 3, "Error: no store at /no/such/dir/x.db"),
])
def test_bad_store_url_is_one_line(runner, url, exit_code, message):
    for args in (["traces"], ["components"], ["traces", "show", "a" * 32],
                 ["feedback", "add", "a" * 32, "--score", "1"]):
        result = runner.invoke(main, [*args, "--store", url])
        assert result.exit_code == exit_code, (args, result.output)
        assert result.stderr.startswith(message)
        assert result.stderr.strip().count("\n") == 0
        assert "Traceback" not in result.output


def test_components_json_lists_versions_and_call_counts(store_url, runner):
    store = open_store(store_url)
    write_run(store, 1, hours_ago=3)
    write_run(store, 2, hours_ago=2, planner=PLANNER_V2, planner_version=P2)
    write_run(store, 3, hours_ago=1, planner=PLANNER_V2, planner_version=P2)
    result = invoke(runner, ["components", "--agent", AGENT, "--json"], store_url)
    assert result.exit_code == 0, result.output
    data = {c["name"]: c for c in json.loads(result.stdout)}
    assert data["planner"]["calls"] == 3 and data["answerer"]["calls"] == 3
    versions = {v["version"]: v for v in data["planner"]["versions"]}
    assert versions[P1]["calls"] == 1 and versions[P2]["calls"] == 2
    assert versions[P2]["template"] == PLANNER_V2
    assert versions[P1]["first_seen"] <= versions[P1]["last_seen"] < versions[P2]["last_seen"]


def test_components_text_shows_templates(store_url, runner):
    write_run(open_store(store_url), 1)
    result = invoke(runner, ["components"], store_url)
    assert result.exit_code == 0, result.output
    assert "planner  1 calls  1 version(s)" in result.stdout
    assert "system: Plan the steps to answer." in result.stdout
    assert "human: {question}" in result.stdout


def test_reading_a_sqlite_store_that_does_not_exist_says_so(tmp_path, runner):
    missing = tmp_path / "typo.db"
    for args in (["traces"], ["components"], ["traces", "show", "a" * 32]):
        result = runner.invoke(main, [*args, "--store", f"sqlite:///{missing}"])
        assert result.exit_code == 3, (args, result.output)
        assert f"no store at {missing}" in result.stderr
        assert result.stderr.strip().count("\n") == 0
    assert not missing.exists()


def test_empty_store_prints_no_data_on_stdout(sqlite_url, runner):
    open_store(sqlite_url)
    for args in (["traces"], ["components"]):
        result = invoke(runner, args, sqlite_url)
        assert result.exit_code == 0
        assert result.stdout == "" and result.stderr.startswith("no ")
    result = invoke(runner, ["traces", "--json"], sqlite_url)
    assert json.loads(result.stdout) == []
