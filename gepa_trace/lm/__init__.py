"""The one door to LLMs: litellm with retries, concurrency, cost accounting and the budget.

    from gepa_trace.lm import LM, Budget
    lm = LM("gepa-sim/task", budget=Budget(max_llm_calls=100))
    lm.complete("What is the capital of France?").text

Public names: ``LM``, ``Completion``, ``Usage`` (client.py), ``Budget``, ``Spent``
(budget.py), ``extract_fenced`` (fenced.py), ``LiteLLMChatModel`` (chat_model.py, a
LangChain chat model over an LM). The offline simulated provider is ``gepa_trace.lm.sim``.
Importing this package imports neither litellm nor LangChain; each name loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from gepa_trace.lm.budget import Budget, Spent
from gepa_trace.lm.fenced import extract_fenced

_LAZY = {
    "LM": "gepa_trace.lm.client",
    "Completion": "gepa_trace.lm.client",
    "Usage": "gepa_trace.lm.client",
    "LiteLLMChatModel": "gepa_trace.lm.chat_model",
}

__all__ = ["LM", "Budget", "Completion", "LiteLLMChatModel", "Spent", "Usage", "extract_fenced"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gepa_trace.lm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(globals()))
