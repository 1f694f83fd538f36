"""gepa-trace: turn the production traces of LLM agents into better prompts.

    import gepa_trace as gt
    inst = gt.instrument(store="sqlite:///gepa_trace.db", service_name="support-agent")
    planner = gt.component("planner", ChatPromptTemplate.from_messages([...]))
    gt.record_feedback(trace_id, score=0.0, comment="wrong country")

Names are imported on first use, so ``import gepa_trace`` stays cheap.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# litellm downloads its price list at import unless told not to; nothing of ours wants that.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"

_EXPORTS = {
    "instrument": "gepa_trace.collectors.instrument",
    "Instrumentation": "gepa_trace.collectors.instrument",
    "agent_run": "gepa_trace.collectors.instrument",
    "record_feedback": "gepa_trace.store.feedback",
    "component": "gepa_trace.prompts",
    "PromptSet": "gepa_trace.prompts",
    "PromptVersion": "gepa_trace.prompts",
    "load_prompts": "gepa_trace.prompts.registry",
    "open_store": "gepa_trace.store",
    "LM": "gepa_trace.lm",
    "Budget": "gepa_trace.lm",
    "Score": "gepa_trace.optimizer.protocols",
    "Example": "gepa_trace.optimizer.protocols",
    "optimize": "gepa_trace.replay",
    "GepaTraceError": "gepa_trace.errors",
    "BudgetExhausted": "gepa_trace.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]  # noqa: PLE0605 - _EXPORTS is the one list of names


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gepa_trace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
