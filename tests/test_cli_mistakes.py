"""Mistakes a user makes with the store, each run as the real `gepa-trace` process from a
fresh working directory.

Every row must end the same way: one line on stderr that names the cause (click's usage
preamble may come before it), the documented exit code (see ``gepa_trace.errors``), no
traceback, no new file in the folder (no stray database, no -wal/-shm, no half-written
output), and every file that was there byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TRACE = "000000014bf92f3577b34da6a3ce929d"  # run 1 of test_cli_traces.write_run
UNKNOWN = "f" * 32
NO_STORE = "Error: no store at {dir}/{name} ("
NOT_OURS = ("Error: store sqlite:///{name} is not a gepa-trace store (it has tables: orders, "
            "users); refusing to add ours")
OPTIMIZE = ["optimize", "--agent", "support-agent", "--reflection-lm", "gepa-sim/reflect"]


@dataclass(frozen=True)
class Mistake:
    args: list[str]
    exit_code: int
    message: str  # the start of the last stderr line; {dir}, {name} filled in
    files: tuple[str, ...] = ()  # what the folder holds before the command
    env: dict[str, str] = field(default_factory=dict)
    name: str = "typo.db"  # the store file the message names
    preamble: tuple[str, ...] = ()  # other stderr lines allowed before the error


def typo(*args: str, **kw) -> Mistake:
    """The command on a misspelled SQLite path: exit 3, 'no store at PATH'."""
    return Mistake([*args, "--store", "sqlite:///typo.db"], 3, NO_STORE, **kw)


MISTAKES = {
    # A misspelled store path, for every command that reads one.
    "traces on a typo": typo("traces"),
    "traces show on a typo": typo("traces", "show", TRACE),
    "feedback add on a typo": typo("feedback", "add", TRACE, "--score", "0"),
    "feedback import on a typo": typo("feedback", "import", "ratings.csv",
                                      files=("ratings.csv",)),
    "components on a typo": typo("components"),
    "runs on a typo": typo("runs"),
    "runs show on a typo": typo("runs", "show", "run-1"),
    "export on a typo": typo("export", "run-1", "--out", "prompts.json"),
    "report on a typo": typo("report", "run-1", "--out", "report.html"),
    "prompts ls on a typo": typo("prompts", "ls"),
    "prompts promote on a typo": typo("prompts", "promote", "planner", "abc123"),
    "prompts diff on a typo": typo("prompts", "diff", "abc123", "def456"),
    "optimize on a typo": typo(*OPTIMIZE, preamble=("optimizing ",)),
    "--store before the command, misspelled": Mistake(
        ["--store", "sqlite:///typo.db", "traces"], 3, NO_STORE),
    "a typo in $GEPA_TRACE_STORE": Mistake(
        ["components"], 3, NO_STORE, env={"GEPA_TRACE_STORE": "sqlite:///typo.db"}),
    "no store at all in this folder": Mistake(["traces"], 3, NO_STORE, name="gepa_trace.db"),
    "a directory that does not exist": Mistake(
        ["traces", "--store", "sqlite:///nowhere/x.db"], 3, "Error: no store at {dir}/nowhere/x.db"),
    # Files that are not a store of ours.
    "a zero-byte file (touch)": Mistake(
        ["traces", "--store", "sqlite:///touched.db"], 3, NO_STORE, files=("touched.db",),
        name="touched.db"),
    "someone else's SQLite database": Mistake(
        ["traces", "--store", "sqlite:///app.db"], 1, NOT_OURS, files=("app.db",), name="app.db"),
    "someone else's database, with a creator": Mistake(
        ["ingest", "spans.json", "--store", "sqlite:///app.db"], 1, NOT_OURS,
        files=("app.db", "spans.json"), name="app.db"),
    "someone else's database, with optimize": Mistake(
        [*OPTIMIZE, "--store", "sqlite:///app.db"], 1, NOT_OURS, files=("app.db",),
        name="app.db", preamble=("optimizing ",)),
    "a file that is not a database": Mistake(
        ["components", "--store", "sqlite:///notes.db"], 1,
        "Error: cannot open store sqlite:///notes.db: file is not a database",
        files=("notes.db",)),
    "not a database URL": Mistake(["traces", "--store", "mysql://u@h/db"], 1,
                                  "Error: store URL 'mysql://u@h/db': unsupported database"),
    # Right store, wrong arguments.
    "an unknown trace id": Mistake(["traces", "show", UNKNOWN, "--store", "sqlite:///store.db"],
                                   3, f"Error: no trace {UNKNOWN}", files=("store.db",)),
    "feedback on an unknown trace": Mistake(
        ["feedback", "add", UNKNOWN, "--score", "1", "--store", "sqlite:///store.db"], 3,
        f"Error: unknown trace id {UNKNOWN}", files=("store.db",)),
    "a malformed trace id": Mistake(
        ["feedback", "add", "run-42", "--score", "1", "--store", "sqlite:///store.db"], 1,
        "Error: trace id 'run-42' is malformed", files=("store.db",)),
    "feedback with nothing in it": Mistake(
        ["feedback", "add", TRACE, "--store", "sqlite:///store.db"], 1, "Error: ",
        files=("store.db",)),
    "a --since that is not a date": Mistake(
        ["traces", "--since", "yesterday", "--store", "sqlite:///store.db"], 2,
        "Error: Invalid value: 'yesterday' is neither a duration", files=("store.db",),
        preamble=("Usage: ", "Try ")),
    "an unknown run id": Mistake(["export", "run-nope", "--out", "prompts.json",
                                  "--store", "sqlite:///store.db"], 3,
                                 "Error: no optimization run 'run-nope'", files=("store.db",)),
    "promoting an unknown version": Mistake(
        ["prompts", "promote", "planner", "abc123", "--store", "sqlite:///store.db"], 3,
        "Error: ", files=("store.db",)),
}


def _make(folder: Path, name: str) -> None:
    path = folder / name
    if name == "store.db":
        from test_cli_traces import write_run

        from gepa_trace.store import forget_store, open_store

        url = f"sqlite:///{path}"
        write_run(open_store(url, create=True), 1)
        forget_store(url)  # closing the last connection folds the WAL back into the file
    elif name == "app.db":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
        conn.commit()
        conn.close()
    elif name == "touched.db":
        path.touch()
    elif name == "notes.db":
        path.write_text("my notes, not a database\n" * 40)
    elif name == "ratings.csv":
        path.write_text(f"trace_id,score\n{TRACE},1\n")
    elif name == "spans.json":
        path.write_text('{"resourceSpans": []}\n')
    else:  # pragma: no cover - a row naming a file nobody makes
        raise AssertionError(name)


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_mistake_is_one_line_an_exit_code_and_no_change(case, tmp_path):
    mistake = MISTAKES[case]
    folder = tmp_path / "work"
    folder.mkdir()
    for name in mistake.files:
        _make(folder, name)
    before = _snapshot(folder)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GEPA_TRACE_", "PYTEST_"))}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", **mistake.env)
    done = subprocess.run([sys.executable, "-m", "gepa_trace.cli", *mistake.args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    lines = done.stderr.rstrip("\n").splitlines()
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.returncode == mistake.exit_code, done.stderr
    expected = mistake.message.format(dir=folder, name=mistake.name)
    assert lines and lines[-1].startswith(expected), done.stderr
    others = [line for line in lines[:-1]
              if line.strip() and not line.startswith(mistake.preamble)]
    assert others == [], done.stderr
    assert _snapshot(folder) == before  # nothing created, nothing changed


@pytest.mark.postgres
@pytest.mark.parametrize("foreign", [False, True], ids=["empty schema", "someone else's"])
def test_a_postgres_schema_without_our_store_is_one_line_and_left_alone(foreign, empty_pg_url,
                                                                        tmp_path):
    import sqlalchemy as sa

    engine = sa.create_engine(empty_pg_url)
    if foreign:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE invoices (id integer primary key)"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GEPA_TRACE_", "PYTEST_"))}
    done = subprocess.run([sys.executable, "-m", "gepa_trace.cli", "traces",
                           "--store", empty_pg_url], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    if foreign:
        assert done.returncode == 1
        assert "(it has tables: invoices); refusing to add ours" in done.stderr
    else:
        assert done.returncode == 3
        assert done.stderr.startswith("Error: no store at postgresql")
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == (["invoices"] if foreign else [])
    engine.dispose()
    assert list(tmp_path.iterdir()) == []
