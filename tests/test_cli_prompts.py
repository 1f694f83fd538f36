import json

from click.testing import CliRunner

from gepa_trace.cli import main
from gepa_trace.prompts import PromptSet
from gepa_trace.prompts.registry import record_versions
from gepa_trace.store import open_store


def test_prompts_promote_ls_and_diff(sqlite_url):
    seed = PromptSet({"answerer": "Answer."}, agent="qa")
    better = seed.with_instruction("answerer", "Answer with only the name.")
    store = open_store(sqlite_url)
    record_versions(store, seed)
    record_versions(store, better)
    v_seed, v_best = seed.versions()["answerer"], better.versions()["answerer"]
    runner = CliRunner()
    result = runner.invoke(main, ["prompts", "promote", "answerer", v_best[:6],
                                  "--store", sqlite_url])
    assert result.exit_code == 0, result.output
    assert f"production -> {v_best}" in result.output
    listed = json.loads(runner.invoke(main, ["prompts", "ls", "--json", "--store",
                                             sqlite_url]).output)
    assert {v["version"]: v["aliases"] for v in listed} == {v_best: ["production"], v_seed: []}
    diff = runner.invoke(main, ["prompts", "diff", v_seed, v_best, "--store", sqlite_url])
    assert "+Answer with only the name." in diff.output


def test_promoting_an_unknown_version_is_one_line_and_exit_3(sqlite_url):
    result = CliRunner().invoke(main, ["prompts", "promote", "answerer", "abcdef",
                                       "--store", sqlite_url])
    assert result.exit_code == 3
    assert "no prompt version 'abcdef'" in result.output
    assert "Traceback" not in result.output
