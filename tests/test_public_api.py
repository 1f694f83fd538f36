import subprocess
import sys

import gepa_trace as gt


def test_every_public_name_resolves():
    for name in gt.__all__:
        assert getattr(gt, name) is not None, name


def test_the_design_contract_names_exist():
    for name in ("instrument", "component", "agent_run", "record_feedback", "optimize",
                 "Budget", "PromptSet", "load_prompts", "Score"):
        assert callable(getattr(gt, name)), name


def test_importing_gepa_trace_does_not_import_litellm_or_langchain():
    code = ("import sys, gepa_trace; "
            "print(any(m.split('.')[0] in ('litellm', 'langchain_core', 'sqlmodel') "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "False", out.stderr
