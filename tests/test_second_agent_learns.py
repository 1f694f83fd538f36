"""Acceptance 4: a second agent of a user's own improves from recorded feedback alone.

Not the demo: `tests/apps/ticket_app.py` (a support-ticket desk with components
`triage` and `reply`) is copied into an empty folder as `app.py`. Its production
traffic is recorded with gt.instrument(store=...), and the only signal is what users
recorded with record_feedback: corrections of the `team` field (`expected=`,
`expected_field="team"`), thumbs up on some right answers, a vague "wrong team" on a
few. There is no metric of the user's and no answer key: the real console script runs
`optimize --metric feedback` with the simulated models, from that folder, with no
PYTHONPATH.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
from pathlib import Path

from langchain_core.prompts import ChatPromptTemplate
from user_shell import cli_in, run_in

import gepa_trace as gt

APP = Path(__file__).parent / "apps" / "ticket_app.py"
STORE = "sqlite:///tickets.db"
TRIAGE_SEED = ("Route the customer's message to one team: billing, shipping, technical, "
               "account. Reply with the team name.")

SERVE = textwrap.dedent('''
    import json
    import gepa_trace as gt
    import app

    inst = gt.instrument(store="sqlite:///tickets.db", service_name="ticket-desk")
    agent = app.build_agent(gt.PromptSet({"triage": app.triage, "reply": app.reply}))
    right = 0
    for i, message in enumerate(app.TICKETS):
        with gt.agent_run("ticket-desk", inputs={"message": message}) as run:
            out = agent.invoke({"message": message}); run.set_outputs(out)
        team = app.TEAM_OF[message]
        if out["team"] == team:
            right += 1
            if i % 3 != 2:  # most happy users click thumbs up, some say nothing
                gt.record_feedback(run.trace_id, score=1.0)
        elif i % 7 == 3:  # a vague complaint: no right answer in it
            gt.record_feedback(run.trace_id, score=0.0, comment="wrong team")
        else:  # the agent's operator corrects the team, sometimes saying why
            word = next(w for w in app.KEYWORDS[team] if w in message.lower())
            why = f"{word} questions go to {team}" if i % 3 else None
            gt.record_feedback(run.trace_id, score=0.0, expected=team, expected_field="team",
                               comment=why, source="reviewer")
    print(json.dumps({"right": right, "of": len(app.TICKETS)}))
    inst.shutdown()
''')


def test_a_ticket_desk_learns_keyword_routing_from_its_recorded_feedback_alone(tmp_path):
    folder = tmp_path / "ticket-desk"
    folder.mkdir()
    shutil.copy(APP, folder / "app.py")
    (folder / "serve.py").write_text(SERVE)

    served = run_in(folder, sys.executable, "serve.py")
    assert served.returncode == 0, served.stderr
    production = json.loads(served.stdout.strip().splitlines()[-1])
    assert production["right"] <= production["of"] // 2, "the seed prompt misroutes most tickets"

    optimized = cli_in(folder, "optimize", "--agent", "ticket-desk", "--entrypoint",
                     "app:build_agent", "--metric", "feedback", "--reflection-lm",
                     "gepa-sim/reflect", "--judge-lm", "gepa-sim/judge",
                     "--budget-rollouts", "300", "--split", "0.5,0.2,0.3", "--store", STORE, "--json")
    assert optimized.returncode == 0, optimized.stderr
    summary = json.loads(optimized.stdout.strip().splitlines()[-1])
    held_out = summary["held_out"]
    gate = held_out["gate"]
    assert gate["significant"] and gate["gain"] >= 0.3, held_out

    exported = cli_in(folder, "export", summary["run_id"], "--out", "prompts.json",
                    "--store", STORE)
    assert exported.returncode == 0, exported.stderr
    exported = json.loads((folder / "prompts.json").read_text())["components"]
    triage = exported["triage"]["messages"][0]["content"]
    rules = re.findall(r"(?:If the message mentions|When the message contains) '(\w+)'", triage)
    assert len(rules) >= 2, triage
    assert triage.startswith(TRIAGE_SEED), "the seed instruction is kept, rules are added"


def test_the_ticket_desk_is_routed_by_keyword_rules_not_by_remembering_tickets():
    """What the optimizer can reach: rules on the deciding words route every ticket, and
    the seed prompt, which only names the teams, misroutes most of them."""
    sys.path.insert(0, str(APP.parent))
    try:
        import ticket_app as app
    finally:
        sys.path.remove(str(APP.parent))

    seed = app.build_agent(gt.PromptSet({"triage": app.triage, "reply": app.reply}))
    messages = app.TICKETS[::3]  # every team, 22 tickets
    right = sum(seed.invoke({"message": m})["team"] == app.TEAM_OF[m] for m in messages)
    assert right <= len(messages) // 3, right

    rules = "\n".join(f"- If the message mentions '{word}', answer {team}."
                      for team, words in app.KEYWORDS.items() for word in words)
    taught = app.triage.messages[0].prompt.template + "\nRules:\n" + rules + \
        "\n- Answer with only the team name."
    prompt = ChatPromptTemplate.from_messages([("system", taught),
                                               ("human", "Message: {message}\nTeam:")])
    agent = app.build_agent(gt.PromptSet({"triage": prompt, "reply": app.reply}))
    outputs = {m: agent.invoke({"message": m}) for m in messages}
    assert all(out["team"] == app.TEAM_OF[m] for m, out in outputs.items()), outputs
    assert all(out["team"] in out["reply"] for out in outputs.values())
