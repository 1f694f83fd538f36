"""Reading spans, whatever convention wrote them: the derived columns of a stored span.

``derive()`` maps one span's attributes onto the columns the rest of gepa-trace filters
on (agent, component, span type, optimization run, prompt version, model, tokens). Our
own instrumentation writes OpenInference names plus ``gepa.*``; readers of the other
conventions (OpenInference from other instrumentors, OTel GenAI, OpenLLMetry) extend it.
The raw attributes are always stored as they came; this only fills derived columns.
"""

from __future__ import annotations

from typing import Any, Mapping

SPAN_TYPES = ("agent", "chain", "llm", "tool", "retriever", "prompt", "embedding")

_OPENINFERENCE_KINDS = {
    "LLM": "llm", "CHAIN": "chain", "TOOL": "tool", "RETRIEVER": "retriever",
    "EMBEDDING": "embedding", "PROMPT": "prompt", "AGENT": "agent",
    "RERANKER": "retriever", "GUARDRAIL": "chain", "EVALUATOR": "chain",
}

DERIVED_COLUMNS = ("agent", "component", "span_type", "run_id", "prompt_version", "model",
                   "input_tokens", "output_tokens")


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def derive(attributes: Mapping[str, Any], *, name: str = "",
           resource: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The derived columns of one span, from its attributes and resource."""
    resource = resource or {}
    kind = attributes.get("openinference.span.kind")
    span_type = _OPENINFERENCE_KINDS.get(str(kind).upper()) if kind else None
    agent = (attributes.get("gepa.agent") or attributes.get("agent.name")
             or resource.get("service.name"))
    component = attributes.get("gepa.component")
    return {
        "agent": str(agent) if agent is not None else None,
        "component": str(component) if component is not None else None,
        "span_type": span_type,
        "run_id": attributes.get("gepa.run.id"),
        "prompt_version": attributes.get("gepa.prompt.version")
        or attributes.get("llm.prompt_template.version"),
        "model": attributes.get("llm.model_name"),
        "input_tokens": _int(attributes.get("llm.token_count.prompt")),
        "output_tokens": _int(attributes.get("llm.token_count.completion")),
    }
