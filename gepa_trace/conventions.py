"""Reading spans, whatever convention wrote them: the derived columns of a stored span.

``derive()`` maps one span's attributes onto the columns the rest of gepa-trace filters
on (agent, component, span type, optimization run, prompt version, model, tokens). It
reads, in order of precedence:

- ours: ``gepa.agent``, ``gepa.component``, ``gepa.prompt.version``, ``gepa.run.id``
  (plus the OpenInference names our instrumentation also writes);
- OpenInference (``openinference-instrumentation-langchain``): ``openinference.span.kind``,
  ``llm.model_name``, ``llm.token_count.*``, ``agent.name``, ``llm.prompt_template.*``
  and the ``metadata`` JSON (where LangChain run metadata lands: ``gepa.component`` set by
  ``gepa_trace.component()``, and ``langgraph_node``);
- OTel GenAI: ``gen_ai.operation.name``, ``gen_ai.request.model`` /
  ``gen_ai.response.model``, ``gen_ai.usage.input_tokens|output_tokens`` and the older
  ``prompt_tokens|completion_tokens``, ``gen_ai.agent.name``, ``gen_ai.system_instructions``;
- OpenLLMetry: ``traceloop.span.kind``, ``traceloop.entity.name|path``,
  ``traceloop.workflow.name`` (the agent), ``llm.request.type``, ``llm.usage.*``.

Component identity of a foreign span (DESIGN.md, "Components"), first that exists: an
explicit name (``gepa.component`` attribute or run metadata); the LangChain run name
of a PROMPT span (its span name, unless it is the default class name); the LangGraph
node (``langgraph_node`` in the metadata); the OpenLLMetry entity; a hash of the
template (``prompt-<version>``). A foreign span's prompt version is its template's
hash; OpenInference's ``llm.prompt_template.version`` (a label its user chose) is the
version only of a span that carries no template. OpenInference records a
ChatPromptTemplate's template on the PROMPT span, not on the LLM span that used it; the
store joins the two (``store.prompt_links``).

The raw attributes are always stored as they came; this only fills derived columns.
This module sits below both ``store`` and ``collectors`` (both read spans through it),
so it imports neither.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

SPAN_TYPES = ("agent", "chain", "llm", "tool", "retriever", "prompt", "embedding")

_OPENINFERENCE_KINDS = {
    "LLM": "llm", "CHAIN": "chain", "TOOL": "tool", "RETRIEVER": "retriever",
    "EMBEDDING": "embedding", "PROMPT": "prompt", "AGENT": "agent",
    "RERANKER": "retriever", "GUARDRAIL": "chain", "EVALUATOR": "chain",
}
_GENAI_OPERATIONS = {
    "chat": "llm", "text_completion": "llm", "generate_content": "llm",
    "embeddings": "embedding", "execute_tool": "tool", "invoke_agent": "agent",
    "create_agent": "agent",
}
_TRACELOOP_KINDS = {"workflow": "chain", "task": "chain", "agent": "agent", "tool": "tool"}
_TEMPLATE_ROLES = {"system": "system", "human": "human", "user": "human", "ai": "ai",
                   "assistant": "ai"}

DERIVED_COLUMNS = ("agent", "component", "span_type", "run_id", "prompt_version", "model",
                   "input_tokens", "output_tokens")
_MAX_NAME = 255  # the width of the agent / component / model columns


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else str(value)
    return text[:_MAX_NAME]


def _first(attributes: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None and value != "":
            return value
    return None


def json_value(value: Any) -> Any:
    """A JSON-valued attribute as data (attributes carry JSON as strings); None if invalid."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def parts_text(parts: Any) -> str:
    """The text of a GenAI parts list (``[{type: text, content}]``), or of a string."""
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        return ""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text":
            content = part.get("content", part.get("text"))
            if isinstance(content, str):
                texts.append(content)
    return "\n".join(texts)


def span_type_of(attributes: Mapping[str, Any]) -> str | None:
    """agent | chain | llm | tool | retriever | prompt | embedding, or None."""
    kind = attributes.get("openinference.span.kind")
    if kind:
        return _OPENINFERENCE_KINDS.get(str(kind).upper())
    operation = attributes.get("gen_ai.operation.name")
    if operation:
        found = _GENAI_OPERATIONS.get(str(operation).lower())
        if found:
            return found
    if attributes.get("llm.request.type"):  # OpenLLMetry LLM spans
        return "llm"
    kind = attributes.get("traceloop.span.kind")
    if kind:
        return _TRACELOOP_KINDS.get(str(kind).lower())
    if "gen_ai.request.model" in attributes or "gen_ai.system" in attributes \
            or "gen_ai.provider.name" in attributes:
        return "llm"
    return None


_METADATA_KEYS = ("gepa.component", "gepa.prompt.version", "langgraph_node")
_METADATA_FIELD = {key: re.compile(r'"' + re.escape(key) + r'"\s*:\s*"((?:[^"\\]|\\.)*)"')
                   for key in _METADATA_KEYS}


def _metadata(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The few string fields of OpenInference's ``metadata`` JSON that name components.

    Read with a regex, not json.loads: metadata is on every span of a LangGraph app and
    parsing all of it was a third of the collector's per-span cost.
    """
    value = attributes.get("metadata")
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return {}
    out = {}
    for key, pattern in _METADATA_FIELD.items():
        if key in value:
            match = pattern.search(value)
            if match:
                text = match.group(1)
                if "\\" not in text and text.isprintable():
                    out[key] = text  # what json.loads makes of it, at a tenth of the cost
                    continue
                try:
                    out[key] = json.loads(f'"{text}"')
                except ValueError:
                    pass
    return out


def _is_default_run_name(name: str) -> bool:
    # LangChain names a run after its class unless run_name is given.
    return not name or name.endswith("Template")  # PromptTemplate, ChatPromptTemplate, ...


def foreign_template(attributes: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """The template messages a foreign span carries, in our template format, or None.

    OpenInference: ``llm.prompt_template.template`` (the first message of the chat
    template; its role is read from the rendered output when present). GenAI:
    ``gen_ai.system_instructions``, the one part of a call's input that is a prompt
    rather than data.
    """
    text = attributes.get("llm.prompt_template.template")
    if isinstance(text, str) and text:
        role = _template_roles.get(text)
        if role is None:
            role = _first_role(attributes.get("output.value"))
            if len(_template_roles) < 10_000:  # a template's role never changes
                _template_roles[text] = role
        return [{"role": role, "content": text}]
    instructions = attributes.get("gen_ai.system_instructions")
    if instructions:
        value = json_value(instructions)
        content = parts_text(value) if isinstance(value, list) else str(instructions)
        if content:
            return [{"role": "system", "content": content}]
    return None


_template_roles: dict[str, str] = {}


def _first_role(output_value: Any) -> str:
    """The role of the first rendered message of an OpenInference PROMPT span."""
    rendered = json_value(output_value)
    if isinstance(rendered, dict):
        messages = rendered.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            kind = messages[0].get("type") or (messages[0].get("kwargs") or {}).get("type")
            return _TEMPLATE_ROLES.get(str(kind), "system")
        if "text" in rendered:  # a plain PromptTemplate renders one human message
            return "human"
    return "system"


@lru_cache(maxsize=4096)
def _version_of(role: str, content: str) -> str:
    from gepa_trace.prompts.templates import template_version

    return template_version([{"role": role, "content": content}])


def prompt_template_json(attributes: Mapping[str, Any]) -> str | None:
    """The template (messages JSON) to record as a prompt version for this span."""
    template = attributes.get("gepa.prompt.template")
    if template:
        return template if isinstance(template, str) else json.dumps(template)
    if attributes.get("gepa.prompt.version"):
        return None  # our version, without our template: nothing to record or check
    metadata = attributes.get("metadata")
    if isinstance(metadata, str) and "gepa.prompt.version" in metadata:
        # The version names our full template; the partial one OpenInference recorded
        # must not be stored under that name.
        return None
    found = foreign_template(attributes)
    if not found:
        return None
    if len(found) == 1:  # as foreign_template makes them: the JSON of each, once
        return _one_message_json(found[0]["role"], found[0]["content"])
    return json.dumps(found, ensure_ascii=False)


@lru_cache(maxsize=4096)
def _one_message_json(role: str, content: str) -> str:
    return json.dumps([{"role": role, "content": content}], ensure_ascii=False)


def _component(attributes: Mapping[str, Any], name: str,
               span_type: str | None) -> tuple[str | None, str | None]:
    """(component, prompt version) of a span without ``gepa.component``."""
    metadata = _metadata(attributes) if "metadata" in attributes else {}
    explicit = metadata.get("gepa.component")
    version = metadata.get("gepa.prompt.version")
    template = None
    if span_type == "prompt" or (span_type == "llm" and "gen_ai.system_instructions"
                                 in attributes):
        template = foreign_template(attributes)
        if template and not version:
            version = _version_of(template[0]["role"], template[0]["content"])
    if explicit:
        return _name(explicit), _name(version) if template or version else None
    candidate = None
    if span_type == "prompt" and not _is_default_run_name(name):
        candidate = name
    candidate = candidate or metadata.get("langgraph_node") or attributes.get("graph.node.id")
    if not candidate and span_type in ("chain", "agent", "tool"):
        candidate = attributes.get("traceloop.entity.name")
    if not candidate and span_type == "llm":
        path = attributes.get("traceloop.entity.path")
        candidate = str(path).rsplit(".", 1)[-1] if path else None
    if not candidate and template and version:
        candidate = f"prompt-{version}"
    return _name(candidate), (_name(version) if template else None)


def derive(attributes: Mapping[str, Any], *, name: str = "",
           resource: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The derived columns of one span, from its attributes and resource."""
    return dict(zip(DERIVED_COLUMNS, derive_values(attributes, name, resource)))


def derive_values(attributes: Mapping[str, Any], name: str = "",
                  resource: Mapping[str, Any] | None = None) -> tuple:
    """``derive()``'s values as a tuple in ``DERIVED_COLUMNS`` order (what the store's
    row tuples hold; no dict per span)."""
    get = attributes.get
    span_type = span_type_of(attributes)
    agent = (get("gepa.agent") or get("agent.name") or get("gen_ai.agent.name")
             or get("traceloop.workflow.name") or (resource or {}).get("service.name"))
    component = get("gepa.component")
    version = get("gepa.prompt.version")
    if component is None and (span_type in ("llm", "prompt")
                              or "traceloop.entity.name" in attributes):
        component, found_version = _component(attributes, name, span_type)
        version = version or found_version
    # OpenInference's version is a label its user chose, not a content hash: the
    # template's hash names it where the span carries the template.
    version = version or get("llm.prompt_template.version")
    if span_type in ("llm", "embedding", None):
        input_tokens, output_tokens, _total = token_counts(attributes)
        model = _name(model_of(attributes))
    else:  # chains, tools, prompts carry no model or usage; skip eight lookups
        input_tokens = output_tokens = model = None
    return (_name(agent), _name(component), span_type, _name(get("gepa.run.id")),
            _name(version), model, input_tokens, output_tokens)


def model_of(attributes: Mapping[str, Any]) -> Any:
    """The model asked for (the one a replay calls again), whatever the convention."""
    return _first(attributes, "llm.model_name", "gen_ai.request.model",
                  "gen_ai.response.model", "llm.request.model", "llm.response.model")


def token_counts(attributes: Mapping[str, Any]) -> tuple[int | None, int | None, int | None]:
    """(input, output, total) tokens; total is their sum when not recorded."""
    tin = _int(_first(attributes, "llm.token_count.prompt", "gen_ai.usage.input_tokens",
                      "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens"))
    tout = _int(_first(attributes, "llm.token_count.completion", "gen_ai.usage.output_tokens",
                       "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens"))
    total = _int(_first(attributes, "llm.token_count.total", "gen_ai.usage.total_tokens",
                        "llm.usage.total_tokens"))
    if total is None and tin is not None and tout is not None:
        total = tin + tout
    return tin, tout, total
