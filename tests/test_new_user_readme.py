"""A new user's own agent through the README, verbatim, from its own folder.

Not the demo: `tests/apps/people_app.py` is copied into an empty folder as `app.py`, a
two-component LangChain agent with its own data and metric. Everything runs as separate
processes from that folder, as a user's shell would: no PYTHONPATH, and no store
argument beyond what the README shows (`gt.instrument(store=...)` once in Python,
`--store` on the command line).
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

from user_shell import cli_in, run_in

APP = Path(__file__).parent / "apps" / "people_app.py"
STORE = "sqlite:///people.db"

SERVE = textwrap.dedent('''
    import gepa_trace as gt
    import app

    inst = gt.instrument(store="sqlite:///people.db", service_name="people-desk")
    agent = app.build_agent(gt.PromptSet({"picker": app.picker, "replier": app.replier}))
    for question in app.QUESTIONS:
        with gt.agent_run("people-desk", inputs={"question": question}) as run:
            out = agent.invoke({"question": question}); run.set_outputs(out)
        right = app.ANSWERS[question]
        if out.strip().rstrip(".") == right:
            gt.record_feedback(run.trace_id, score=1.0)
        else:
            gt.record_feedback(run.trace_id, score=0.0, comment=f"the answer should be {right}")
    inst.shutdown()
''')

DEPLOY = textwrap.dedent('''
    import json
    import gepa_trace as gt
    import app

    inst = gt.instrument(store="sqlite:///people.db", service_name="people-desk")
    prompts = gt.load_prompts(alias="production")
    agent = app.build_agent(prompts)
    right = sum(agent.invoke({"question": q}).strip().rstrip(".") == app.ANSWERS[q]
                for q in app.QUESTIONS)
    print(json.dumps({"versions": prompts.versions(), "right": right,
                      "of": len(app.QUESTIONS)}))
    inst.shutdown()
''')


def test_a_new_users_agent_goes_through_the_readme_from_its_own_folder(tmp_path):
    folder = tmp_path / "people-desk"
    folder.mkdir()
    shutil.copy(APP, folder / "app.py")
    (folder / "serve.py").write_text(SERVE)
    (folder / "deploy.py").write_text(DEPLOY)

    served = run_in(folder, sys.executable, "serve.py")
    assert served.returncode == 0, served.stderr
    assert not (folder / "gepa_trace.db").exists(), "feedback went to a stray default store"

    listed = cli_in(folder, "traces", "--agent", "people-desk", "--store", STORE, "--json")
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)
    assert runs and all(r["feedback"] for r in runs), "every production run has its feedback"

    optimized = cli_in(folder, "optimize", "--agent", "people-desk", "--entrypoint",
                     "app:build_agent", "--metric", "app:metric", "--reflection-lm",
                     "gepa-sim/reflect", "--budget-rollouts", "150", "--store", STORE, "--json")
    assert optimized.returncode == 0, optimized.stderr
    lines = optimized.stdout.strip().splitlines()
    assert len(lines) == 1, "--json prints one line, so a cron job can append it"
    summary = json.loads(lines[0])
    gate = summary["held_out"]["gate"]
    assert gate["significant"] and gate["gain"] > 0, summary["held_out"]

    exported = cli_in(folder, "export", summary["run_id"], "--out", "prompts.json",
                    "--promote", "production", "--store", STORE)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((folder / "prompts.json").read_text())

    deployed = run_in(folder, sys.executable, "deploy.py")
    assert deployed.returncode == 0, deployed.stderr
    result = json.loads(deployed.stdout.strip().splitlines()[-1])
    assert result["versions"] == summary["best_prompts"], \
        "the deployed agent loads the prompts the run promoted"
    assert result["right"] > result["of"] // 2, result

    left = sorted(p.name for p in folder.iterdir() if not p.name.startswith("__pycache__"))
    assert "gepa_trace.db" not in left, left
