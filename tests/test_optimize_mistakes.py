"""A new user's mistakes with `gepa-trace optimize`, each stopped by the preflight.

Every row runs the installed `gepa-trace` console script as a subprocess from a temporary
folder that holds the user's own `app.py` (a two-component LangChain agent written
here, not the demo) and a copy of a store where that agent's production runs were
recorded. Each row makes one mistake and expects: exit code 6 (PreflightFailed), one
`Error:` line on stderr naming the cause, no traceback, no new file in the folder, and
no optimization run, candidate or evaluation in the store.

The models are the simulated provider (`gepa-sim/...`) in the subprocess, or the
OpenAI-compatible simulated server this test starts on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gepa_trace.lm.sim.server import serve

AGENT = "mini-qa"
SCRIPT = Path(sys.executable).with_name("gepa-trace")

APP = textwrap.dedent('''
    """mini-qa: rewrite the question, then answer it (two prompts, two components)."""
    import gepa_trace as gt
    from gepa_trace.lm import LiteLLMChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnableParallel

    AGENT = "mini-qa"
    SEED = gt.PromptSet({
        "rewriter": ChatPromptTemplate.from_messages([
            ("system", "Rewrite the question so that it is short and clear."),
            ("human", "Question: {question}")]),
        "answerer": ChatPromptTemplate.from_messages([
            ("system", "Answer the question with one word."),
            ("human", "Question: {question}\\nRewritten: {rewritten}\\nAnswer:")]),
    }, agent=AGENT)


    def lookup(inputs):
        return inputs  # STEP


    def build_agent(prompts, model="gepa-sim/task", api_base=None):
        llm = LiteLLMChatModel(model=model, api_base=api_base, temperature=0)
        rewrite = prompts["rewriter"] | llm | StrOutputParser()
        answer = prompts["answerer"] | llm | StrOutputParser()
        agent = (RunnableLambda(lookup)
                 | RunnableParallel(question=lambda x: x["question"], rewritten=rewrite)
                 | answer)
        return agent  # RETURN


    def metric(example, output, trace):
        return gt.Score(1.0 if "paris" in str(output).lower() else 0.0,  # METRIC
                        "the answer should name the city")
''')

RECORD = textwrap.dedent('''
    import sys
    import gepa_trace as gt
    import app

    inst = gt.instrument(store=sys.argv[1], service_name=app.AGENT)
    agent = app.build_agent(app.SEED)
    for i in range(12):
        question = f"Which city is the capital of country number {i}?"
        with gt.agent_run(app.AGENT, inputs={"question": question}) as run:
            run.set_outputs(agent.invoke({"question": question}))
        gt.record_feedback(run.trace_id, score=0.0, comment="wrong city", name="user",
                       store=sys.argv[1])
    inst.shutdown()
''')


def _env(**extra: str) -> dict[str, str]:
    """The user's shell: no PYTHONPATH, no provider keys, offline litellm price map."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "GEPA_TRACE_STORE") and "API_KEY" not in k
           and not k.startswith("OPENAI_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A store with 12 production runs of mini-qa, recorded once by the app itself."""
    folder = tmp_path_factory.mktemp("recorded")
    (folder / "app.py").write_text(APP)
    store = folder / "store.db"
    subprocess.run([sys.executable, "-c", RECORD, f"sqlite:///{store}"], cwd=folder,
                   env=_env(), check=True, timeout=120, capture_output=True)
    return store


@pytest.fixture(scope="module")
def server():
    handle = serve(api_key="right-key")
    yield handle
    handle.close()


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Mistake:
    name: str
    cause: str  # a fragment the error line must hold
    edits: dict[str, str] = field(default_factory=dict)  # app.py: old -> new text
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: str | None = "app:build_agent"  # None: log-only replay
    metric: str | None = "app:metric"
    reflection_lm: str = "gepa-sim/reflect"
    exit_code: int = 6


METRIC = '    return gt.Score(1.0 if "paris" in str(output).lower() else 0.0,  # METRIC\n' \
         '                    "the answer should name the city")\n'
SERVER = "{server}"  # replaced by the loopback server's base URL
CLOSED = "{closed}"  # replaced by a loopback URL nothing listens on

MISTAKES = [
    Mistake("module not importable", "No module named 'ap'", entrypoint="ap:build_agent"),
    Mistake("app imports a missing package", "No module named 'not_installed_pkg'",
            edits={'"""mini-qa': 'import not_installed_pkg\n"""mini-qa'}),
    Mistake("no such function", "has no attribute 'build'", entrypoint="app:build"),
    Mistake("metric not found", "has no attribute 'score'", metric="app:score"),
    Mistake("build_agent raises", "build_agent raised RuntimeError: no database configured",
            edits={"    llm = LiteLLMChatModel(":
                   "    raise RuntimeError('no database configured')\n"
                   "    llm = LiteLLMChatModel("}),
    Mistake("build_agent returns None", "build_agent returned None",
            edits={"return agent  # RETURN": "agent  # RETURN"}),
    Mistake("build_agent returns a string", "build_agent returned str",
            edits={"return agent  # RETURN": "return 'agent'  # RETURN"}),
    Mistake("the runnable raises", "the agent raised on example",
            edits={"return inputs  # STEP": "raise ValueError('search index is empty')"}),
    Mistake("metric raises", "the metric raised on example",
            edits={METRIC: "    return example.expected['city']\n"}),
    Mistake("metric returns a string", "the metric returned str 'good'",
            edits={METRIC: "    return 'good'\n"}),
    Mistake("metric returns None", "the metric returned NoneType",
            edits={METRIC: "    return None\n"}),
    Mistake("metric returns 7.0", "score 7.0, outside the score range [0, 1]",
            edits={METRIC: "    return 7.0\n"}),
    Mistake("metric returns NaN", "score nan, outside the score range",
            edits={METRIC: "    return float('nan')\n"}),
    Mistake("unknown simulated reflection model", "gepa-sim/reflekt is not a simulated model",
            reflection_lm="gepa-sim/reflekt"),
    Mistake("unknown reflection model at the endpoint", "unknown model",
            reflection_lm="openai/no-such-model",
            args=("--reflection-lm-base", SERVER), env={"OPENAI_API_KEY": "right-key"}),
    Mistake("wrong API key (401)", "authentication failed",
            args=("--task-lm", "openai/task", "--task-lm-base", SERVER),
            env={"OPENAI_API_KEY": "wrong-key"}),
    Mistake("connection refused", "connection refused",
            args=("--task-lm", "openai/task", "--task-lm-base", CLOSED),
            env={"OPENAI_API_KEY": "right-key"}),
    Mistake("missing API key", "no API key",
            args=("--task-lm", "openai/task", "--task-lm-base", SERVER)),
    Mistake("log-only replay: unknown judge model", "gepa-sim/judje is not a simulated model",
            entrypoint=None, metric=None, args=("--judge-lm", "gepa-sim/judje")),
    Mistake("log-only replay: the task model's endpoint is down", "connection refused",
            entrypoint=None, metric=None,
            args=("--judge-lm", "gepa-sim/judge", "--task-lm", "openai/task",
                  "--task-lm-base", CLOSED), env={"OPENAI_API_KEY": "right-key"}),
]


def _files(folder: Path) -> set[str]:
    # __pycache__ is Python's own doing when it imports app.py, not ours
    return {p.name for p in folder.iterdir() if p.name != "__pycache__"}


def _counts(store: Path) -> dict[str, int]:
    with closing(sqlite3.connect(store)) as conn:  # closed: SQLite removes its -wal file
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("optimization_runs", "candidates", "evaluations", "spans",
                              "feedback", "prompt_versions")}


def _optimize(folder: Path, mistake: Mistake, server_url: str,
              closed_url: str) -> subprocess.CompletedProcess:
    args = [a.replace(SERVER, server_url).replace(CLOSED, closed_url) for a in mistake.args]
    if mistake.entrypoint:
        args += ["--entrypoint", mistake.entrypoint]
    if mistake.metric:
        args += ["--metric", mistake.metric]
    return subprocess.run(
        [str(SCRIPT), "optimize", "--agent", AGENT, "--reflection-lm", mistake.reflection_lm,
         "--budget-rollouts", "12", "--store", "sqlite:///store.db", *args],
        cwd=folder, env=_env(**mistake.env), capture_output=True, text=True, timeout=120,
        check=False)


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_each_mistake_stops_the_command_with_one_line_naming_its_cause(
        mistake, recorded, server, closed_port, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    app = APP
    for old, new in mistake.edits.items():
        assert old in app, f"the edit of row {mistake.name!r} no longer applies"
        app = app.replace(old, new)
    (folder / "app.py").write_text(app)
    shutil.copy(recorded, folder / "store.db")
    before_files, before = _files(folder), _counts(folder / "store.db")

    started = time.monotonic()
    result = _optimize(folder, mistake, server.base_url, f"http://127.0.0.1:{closed_port}/v1")
    elapsed = time.monotonic() - started

    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == mistake.exit_code, result.stderr
    assert len(errors) == 1, result.stderr
    assert mistake.cause in errors[0], errors[0]
    assert errors[0].startswith("Error: preflight failed: "), errors[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == "", "no summary is printed for a run that never started"
    assert _files(folder) == before_files
    after = _counts(folder / "store.db")
    for table in ("optimization_runs", "candidates", "evaluations", "feedback"):
        assert after[table] == before[table], f"{table} changed by a failed preflight"
    assert after["spans"] >= before["spans"]  # only the preflight rollout's, if any
    assert elapsed < 60, f"took {elapsed:.0f}s to fail"


# ------------------------------------------------------------------ the same app, no mistake

def _project(tmp_path: Path, recorded: Path, app: str = APP) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "app.py").write_text(app)
    shutil.copy(recorded, folder / "store.db")
    return folder


def _run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), "optimize", "--agent", AGENT,
                           "--reflection-lm", "gepa-sim/reflect", "--budget-rollouts", "12",
                           *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=180, check=False)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_optimize_imports_the_app_from_the_working_directory(processes, recorded, tmp_path):
    """The README's line, run from the folder of app.py, with no PYTHONPATH."""
    folder = _project(tmp_path, recorded)
    result = _run(folder, "--entrypoint", "app:build_agent", "--metric", "app:metric",
                  "--store", "sqlite:///store.db", "--processes", processes)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("run run-")
    assert _files(folder) == {"app.py", "store.db"}


def test_app_dir_imports_the_app_from_another_folder(recorded, tmp_path):
    folder = _project(tmp_path, recorded)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _run(elsewhere, "--entrypoint", "app:build_agent", "--metric", "app:metric",
                  "--app-dir", str(folder), "--store", f"sqlite:///{folder / 'store.db'}")
    assert result.returncode == 0, result.stderr
    without = _run(elsewhere, "--entrypoint", "app:build_agent", "--metric", "app:metric",
                   "--store", f"sqlite:///{folder / 'store.db'}")
    assert without.returncode == 6 and "No module named 'app'" in without.stderr


def test_an_agent_that_breaks_after_the_preflight_exits_7_with_no_held_out_scores(
        recorded, tmp_path):
    """The preflight rollout works, every later one raises: the command must not end in
    exit 0 with scores of 0; whether the loop or the held-out test notices first, it
    exits 7 naming the error, and no held-out evaluation is stored."""
    breaks = APP.replace("    return inputs  # STEP", textwrap.dedent('''
        global CALLS
        CALLS = globals().get("CALLS", 0) + 1
        if CALLS > 1:
            raise ConnectionError("the search backend went away")
        return inputs''').replace("\n", "\n    "))
    folder = _project(tmp_path, recorded, breaks)
    result = _run(folder, "--entrypoint", "app:build_agent", "--metric", "app:metric",
                  "--store", "sqlite:///store.db", "--workers", "1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.returncode == 7, result.stderr
    assert len(errors) == 1 and "the search backend went away" in errors[0], errors
    assert "Traceback" not in result.stderr
    with closing(sqlite3.connect(folder / "store.db")) as conn:
        tests = conn.execute("SELECT count(*) FROM evaluations WHERE purpose = 'test'")
        assert tests.fetchone()[0] == 0
        runs = conn.execute("SELECT totals FROM optimization_runs").fetchall()
    assert len(runs) == 1, "the run is kept, to resume once fixed"


def test_resume_runs_the_preflight_too(recorded, tmp_path):
    """A run resumed after the app broke stops at the preflight and leaves the run as it was."""
    import json

    folder = _project(tmp_path, recorded)
    stop = tmp_path / "stop"
    stop.touch()  # the first command stops at its first safe point: a run to resume
    first = _run(folder, "--entrypoint", "app:build_agent", "--metric", "app:metric",
                 "--store", "sqlite:///store.db", "--stop-file", str(stop), "--json")
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["run_id"]
    stop.unlink()
    (folder / "app.py").write_text(APP.replace(METRIC, "    return 'good'\n"))
    before = _counts(folder / "store.db")
    resumed = _run(folder, "--entrypoint", "app:build_agent", "--metric", "app:metric",
                   "--store", "sqlite:///store.db", "--resume", run_id)
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("Error:")]
    assert resumed.returncode == 6, resumed.stderr
    assert len(errors) == 1 and "the metric returned str 'good'" in errors[0]
    after = _counts(folder / "store.db")
    assert {k: after[k] for k in ("optimization_runs", "candidates", "evaluations")} == \
        {k: before[k] for k in ("optimization_runs", "candidates", "evaluations")}
