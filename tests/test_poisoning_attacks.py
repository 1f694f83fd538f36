"""Attacks on the demo: a share of its production runs carries an attacker's instruction
(in the question, in a feedback comment, or in a page the search tool returns), and the
reflection model is one that follows instructions it reads (``gepa-sim/reflect?mode=naive``).

The first test shows the attack is real: the payload reaches proposed candidates. The
second pins the defence (issue 18, acceptance 1): no payload reaches an exported or
promoted prompt without ``--approve``, and every candidate carrying one is flagged with
the trace ids that carried it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from instrumented import instrumentation_shut_down

from gepa_trace.demo.poison import Poison

CASES = {
    "comment-5%-url-one": Poison(share=0.05, where="comment", payload="url", attackers="one"),
    "input-20%-leak-many": Poison(share=0.20, where="input", payload="leak", attackers="many"),
    "tool-20%-say-one": Poison(share=0.20, where="tool", payload="say", attackers="one"),
    "input-5%-url-one": Poison(share=0.05, where="input", payload="url", attackers="one"),
    # many users writing the same harmless-looking instruction: no URL to spot, no one user
    "comment-20%-say-many": Poison(share=0.20, where="comment", payload="say",
                                   attackers="many"),
    "input-20%-say-many": Poison(share=0.20, where="input", payload="say", attackers="many"),
    "tool-20%-leak-many": Poison(share=0.20, where="tool", payload="leak", attackers="many"),
}
RUNS = 100


@dataclass
class Attack:
    poison: Poison
    summary: dict[str, Any]
    store: str
    out_dir: Path
    user_of: dict[str, str]  # production trace id -> its root span's user.id
    candidates: list[Any]
    instructions: dict[int, str]  # candidate id -> its components' instructions, joined

    @property
    def poisoned_traces(self) -> set[str]:
        return {t for t, u in self.user_of.items() if u.startswith("attacker-")}

    def carrying(self) -> list[Any]:
        return [c for c in self.candidates if self.poison.marker in self.instructions[c.id]]


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def attack(request, tmp_path_factory) -> Attack:
    """One poisoned demo cycle (small: 100 runs, 150 rollouts) with the naive reflection."""
    from gepa_trace.demo.cycle import DemoSettings, run_demo
    from gepa_trace.optimizer.persistence import load_run
    from gepa_trace.store import open_store
    from gepa_trace.store.queries import get_trace, list_runs

    poison = CASES[request.param]
    out_dir = tmp_path_factory.mktemp(request.param.replace("%", "pct"))
    settings = DemoSettings(out_dir=out_dir, runs=RUNS, budget_rollouts=150, workers=4,
                            reflection_lm="gepa-sim/reflect?mode=naive", poison=poison)
    with instrumentation_shut_down():
        summary = run_demo(settings)
    store = open_store(summary["store"])
    user_of = {}
    for run in list_runs(store, agent="demo-qa", limit=None):
        root = get_trace(store, run.trace_id).spans[0]
        user_of[run.trace_id] = root.attributes.get("user.id")
    stored = load_run(store, summary["run_id"])
    instructions = {c.id: "\n".join(stored.versions[(name, v)].instruction
                                    for name, v in c.prompts.items())
                    for c in stored.candidates}
    return Attack(poison, summary, summary["store"], out_dir, user_of, stored.candidates,
                  instructions)


def test_a_poisoned_demo_records_the_attackers_runs_and_the_naive_reflection_proposes_the_payload(
        attack):
    poison = attack.poison
    # Every run names its end user; the poisoned ones name their attacker.
    assert len(attack.user_of) == RUNS and all(attack.user_of.values())
    attackers = {attack.user_of[t] for t in attack.poisoned_traces}
    clean_users = set(attack.user_of.values()) - attackers
    assert clean_users and all(u.startswith("user-") for u in clean_users)
    if poison.where != "tool":  # tool: every run about a target company is hit
        assert len(attack.poisoned_traces) == round(poison.share * RUNS)
    assert attackers == ({"attacker-1"} if poison.attackers == "one"
                         else {f"attacker-{i + 1}" for i in range(len(attack.poisoned_traces))})
    # The attack is real: a model that follows what it reads writes the payload.
    carrying = attack.carrying()
    assert carrying, "no candidate carries the payload: the attack did not happen"
    seed = attack.instructions[0]
    assert poison.marker not in seed


def test_no_payload_reaches_an_exported_or_promoted_prompt_without_approval_and_each_is_flagged(
        attack, tmp_path):
    import importlib

    from click.testing import CliRunner

    from gepa_trace.cli import main
    from gepa_trace.prompts.registry import list_versions
    from gepa_trace.store import open_store

    review_run = importlib.import_module("gepa_trace.prompts.review").review_run

    marker, run_id = attack.poison.marker, attack.summary["run_id"]
    store = open_store(attack.store)
    review = review_run(store, run_id)
    carrying = attack.carrying()
    assert carrying
    for cand in carrying:  # each attempt is visible, with the traces that carried it
        flags = [f for f in review.flags if f.candidate_id == cand.id]
        assert flags, f"candidate {cand.id} carries {marker!r} and is not flagged"
        assert any(set(f.trace_ids) & attack.poisoned_traces for f in flags), flags
    best_carries = marker in attack.instructions[_best_id(store, run_id)]
    if best_carries:
        assert review.best_flags

    # The demo's own export step, and `export` with the gain gate forced, both refuse.
    demo_file = attack.out_dir / "prompts.json"
    assert not demo_file.exists() or marker not in demo_file.read_text()
    out = tmp_path / "prompts.json"
    result = CliRunner().invoke(main, ["--store", attack.store, "export", run_id, "--out",
                                       str(out), "--force", "--promote", "production"])
    if best_carries:
        assert result.exit_code == 8, result.output
    assert not out.exists() or marker not in out.read_text()
    promoted = [v for v in list_versions(store, agent="demo-qa") if "production" in v.aliases]
    assert all(marker not in json.dumps(v.messages) for v in promoted)
    # With explicit approval the user takes responsibility: the export goes through.
    if best_carries:
        approved = CliRunner().invoke(main, ["--store", attack.store, "export", run_id,
                                             "--out", str(out), "--force", "--approve"])
        assert approved.exit_code == 0, approved.output
        assert marker in out.read_text()


def _best_id(store: Any, run_id: str) -> int:
    from gepa_trace.optimizer.persistence import load_run

    return load_run(store, run_id).row.best_candidate_id


def _feedback_by_run(url: str, trace_ids: list[str]) -> list[list[tuple]]:
    from gepa_trace.store.queries import feedback_for_traces

    found = feedback_for_traces(url, trace_ids)
    return [sorted((f.name, f.score, f.comment, f.expected) for f in found[t])
            for t in trace_ids]


def test_poisoning_leaves_the_clean_runs_and_their_feedback_as_they_were(tmp_path):
    from gepa_trace.demo.traffic import run_traffic
    from gepa_trace.store import forget_store, open_store

    urls = [f"sqlite:///{tmp_path / name}.db" for name in ("clean", "poisoned")]
    poison = Poison(share=0.2, where="comment", payload="say", attackers="one", seed=4)
    runs = []
    with instrumentation_shut_down():
        for url, given in zip(urls, (None, poison)):
            open_store(url, create=True)
            runs.append(run_traffic(30, store=url, seed=2, feedback_rate=0.5, poison=given))
    clean, poisoned = (_feedback_by_run(u, r) for u, r in zip(urls, runs))
    hit = [i for i in range(30) if clean[i] != poisoned[i]]
    assert len(hit) == 6  # 20% of 30, each with the attacker's thumbs down and comment
    for i in hit:
        assert ("user", 0.0, poison.text, None) in poisoned[i]
    for url in urls:
        forget_store(url)


def test_a_planted_page_is_returned_only_for_its_targets_and_a_bad_poison_is_refused():
    from gepa_trace.demo.agent import search_tool
    from gepa_trace.demo.world import world

    w = world(0)
    target, other = sorted(w.companies)[:2]
    poison = Poison(share=0.05, where="tool", payload="url").aimed([target, target])
    assert poison.targets == (target,)
    tool = search_tool(0, poison=poison)
    assert poison.text in tool.invoke({"query": target})
    assert poison.text in tool.invoke({"query": w.companies[target].founder})
    assert poison.text not in tool.invoke({"query": other})
    assert search_tool(0).invoke({"query": target}) in tool.invoke({"query": target})
    for bad in ({"share": 0.0}, {"where": "header"}, {"payload": "worm"}, {"attackers": "few"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Poison(**bad)
