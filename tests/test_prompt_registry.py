import json

import pytest
from langchain_core.prompts import ChatPromptTemplate

from gepa_trace.errors import NotFoundError, StoreError
from gepa_trace.prompts import PromptSet, component
from gepa_trace.prompts.registry import (
    diff_versions,
    list_versions,
    load_prompts,
    promote,
    record_versions,
)
from gepa_trace.store import open_store


def _prompts():
    return PromptSet({"planner": "Plan the search.", "answerer": [("system", "Answer."),
                                                                  ("human", "{question}")]},
                     agent="qa")


def test_promoted_versions_load_for_deployment(store_url, tmp_path):
    store = open_store(store_url)
    seed = _prompts()
    better = seed.with_instruction("answerer", "Answer with only the name.")
    record_versions(store, seed, origin="observed")
    record_versions(store, better, run_id="run-1")
    promote(store, "planner", seed.versions()["planner"])
    promote(store, "answerer", better.versions()["answerer"])
    loaded = load_prompts("production", store=store_url, fallback=tmp_path / "p.json")
    assert loaded.versions() == better.versions()
    assert (tmp_path / "p.json").is_file()
    rendered = loaded["answerer"].invoke({"question": "Where?"}).to_messages()
    assert rendered[0].content == "Answer with only the name."


def test_load_prompts_falls_back_to_last_good_file_when_store_unreachable(tmp_path):
    good = _prompts()
    good.save(tmp_path / "p.json")
    dead = "postgresql+psycopg://x:y@127.0.0.1:1/none?connect_timeout=1"
    assert load_prompts(store=dead, fallback=tmp_path / "p.json") == good
    with pytest.raises(StoreError, match="no fallback file"):
        load_prompts(store=dead, fallback=tmp_path / "missing.json")


def test_promote_refuses_unknown_version(store_url):
    store = open_store(store_url)
    with pytest.raises(NotFoundError, match="no prompt version"):
        promote(store, "planner", "deadbeef")


def test_diff_shows_the_changed_instruction(store_url):
    store = open_store(store_url)
    seed = _prompts()
    better = seed.with_instruction("answerer", "Answer with only the name.")
    record_versions(store, seed)
    record_versions(store, better)
    text = diff_versions(store, seed.versions()["answerer"], better.versions()["answerer"])
    assert "-Answer." in text and "+Answer with only the name." in text
    assert {v.version for v in list_versions(store, component="answerer")} == {
        seed.versions()["answerer"], better.versions()["answerer"]}


def test_prompt_files_round_trip_json_and_yaml(tmp_path):
    prompts = _prompts().with_instruction("planner", 'Output JSON like {"q": 1}.')
    for name in ("p.json", "p.yaml"):
        prompts.save(tmp_path / name)
        assert PromptSet.load(tmp_path / name) == prompts


def test_hand_edited_prompt_file_is_refused_with_the_reason(tmp_path):
    path = _prompts().save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    data["components"]["planner"]["messages"][0]["content"] = "edited"
    path.write_text(json.dumps(data))
    with pytest.raises(Exception, match="edited by hand"):
        PromptSet.load(path)


def test_component_binds_name_and_version_to_the_template():
    tpl = component("planner", ChatPromptTemplate.from_messages([("system", "Plan {x}.")]))
    assert tpl.metadata["gepa.component"] == "planner"
    assert len(tpl.metadata["gepa.prompt.version"]) == 12
