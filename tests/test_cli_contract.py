"""The CLI contract every command keeps: --json prints JSON, a bad store URL or an
unreadable file is one line and a non-zero exit, an unknown run id exits 3."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gepa_trace.cli import main

BAD_STORE = "mysql://nobody@nowhere/none"
UNKNOWN_RUN = "run-does-not-exist"


def _one_line_error(result, exit_code=None):
    assert result.exit_code != 0, result.output
    if exit_code is not None:
        assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1, result.output


@pytest.mark.parametrize("args", [
    ["traces"], ["components"], ["runs"], ["prompts", "ls"],
    ["runs", "show", UNKNOWN_RUN], ["export", UNKNOWN_RUN, "--out", "x.json"],
    ["report", UNKNOWN_RUN, "--out", "r.html"], ["feedback", "add", "a" * 32, "--score", "1"],
    ["optimize", "--agent", "a", "--reflection-lm", "gepa-sim/reflect"],
])
def test_a_bad_store_url_is_one_clear_line(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [*args, "--store", BAD_STORE])
    _one_line_error(result)
    assert "unsupported database" in result.output


@pytest.mark.parametrize("args", [
    ["runs", "show", UNKNOWN_RUN], ["export", UNKNOWN_RUN, "--out", "x.json"],
    ["report", UNKNOWN_RUN, "--out", "r.html"],
])
def test_an_unknown_run_id_exits_3(args, sqlite_url, tmp_path, monkeypatch):
    from gepa_trace.store import open_store

    monkeypatch.chdir(tmp_path)
    open_store(sqlite_url)
    result = CliRunner().invoke(main, [*args, "--store", sqlite_url])
    _one_line_error(result, exit_code=3)
    assert UNKNOWN_RUN in result.output


@pytest.mark.parametrize("args", [["feedback", "import"], ["ingest"]])
def test_an_unreadable_file_is_one_clear_line(args, sqlite_url, tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    result = CliRunner().invoke(main, [*args, missing, "--store", sqlite_url])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "nope.jsonl" in result.output


@pytest.mark.parametrize("args", [["traces"], ["components"], ["runs"], ["prompts", "ls"]])
def test_json_output_parses_even_when_empty(args, sqlite_url):
    from gepa_trace.store import open_store

    open_store(sqlite_url)
    result = CliRunner().invoke(main, [*args, "--store", sqlite_url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_an_unknown_entry_point_names_it(sqlite_url):
    result = CliRunner().invoke(main, ["optimize", "--agent", "a", "--entrypoint", "pkg:fn",
                                       "--reflection-lm", "gepa-sim/reflect",
                                       "--store", sqlite_url])
    _one_line_error(result)
    assert "'pkg:fn'" in result.output


def test_debug_shows_the_traceback():
    result = CliRunner().invoke(main, ["--debug", "traces", "--store", BAD_STORE])
    assert result.exit_code != 0
    assert result.exception is not None


READ_COMMANDS = [["traces"], ["components"], ["runs"], ["prompts", "ls"]]


@pytest.mark.parametrize("args", READ_COMMANDS)
def test_a_store_given_before_the_command_is_used(args, sqlite_url, tmp_path, monkeypatch):
    """`gepa-trace --store URL traces`: the group's --store reaches the command, and
    beats $GEPA_TRACE_STORE (here a store that does not exist)."""
    monkeypatch.setenv("GEPA_TRACE_STORE", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    result = CliRunner().invoke(main, ["--store", sqlite_url, *args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    assert not (tmp_path / "elsewhere.db").exists()


@pytest.mark.parametrize("args", READ_COMMANDS)
def test_a_commands_own_store_beats_the_one_before_it(args, sqlite_url, tmp_path):
    missing = tmp_path / "typo.db"
    result = CliRunner().invoke(main, ["--store", sqlite_url, *args,
                                       "--store", f"sqlite:///{missing}"])
    _one_line_error(result, exit_code=3)
    assert f"no store at {missing}" in result.output


def test_a_store_given_before_a_subcommand_group_reaches_the_subcommand(sqlite_url):
    from test_cli_traces import write_run

    from gepa_trace.store import open_store

    trace_id = write_run(open_store(sqlite_url), 1)
    for args in (["--store", sqlite_url, "traces", "show", trace_id],
                 ["traces", "--store", sqlite_url, "show", trace_id]):
        result = CliRunner().invoke(main, [*args, "--json"])
        assert result.exit_code == 0, (args, result.output)
        assert json.loads(result.stdout)["trace_id"] == trace_id


def test_json_output_is_one_line_per_command(sqlite_url):
    """`--json >> nightly.jsonl` appends one line per run (JSON Lines)."""
    from test_cli_traces import write_run

    from gepa_trace.store import open_store

    store = open_store(sqlite_url)
    trace_id = write_run(store, 1)
    write_run(store, 2)
    for args in (["traces"], ["traces", "show", trace_id], ["components"],
                 ["feedback", "add", trace_id, "--score", "1", "--comment", "two\nlines"]):
        result = CliRunner().invoke(main, [*args, "--store", sqlite_url, "--json"])
        assert result.exit_code == 0, (args, result.output)
        assert result.stdout.count("\n") == 1 and result.stdout.endswith("\n"), args
        assert json.loads(result.stdout), args
