"""The message view of one LLM call, whatever convention recorded it.

``llm_view(attributes)`` is what the optimizer and replay read instead of raw
attributes. It understands, in order of precedence:

- OpenInference (ours and ``openinference-instrumentation-*``):
  ``llm.input_messages.{i}.message.role|content|name|tool_call_id``,
  ``...message.contents.{j}.message_content.text``,
  ``...message.tool_calls.{j}.tool_call.id|function.name|function.arguments``,
  ``llm.output_messages.*``; template from ``gepa.prompt.template`` or
  ``llm.prompt_template.template`` / ``llm.prompt_template.variables``;
- OTel GenAI, current form: ``gen_ai.system_instructions`` (parts), ``gen_ai.input.messages``
  and ``gen_ai.output.messages`` (JSON lists of ``{role, parts: [{type: text|tool_call|
  tool_call_response, ...}]}``);
- OTel GenAI / OpenLLMetry, older indexed form: ``gen_ai.prompt.{i}.role|content``,
  ``gen_ai.prompt.{i}.tool_calls.{j}.*``, ``gen_ai.completion.{i}.*`` (and the oldest
  OpenLLMetry ``llm.prompts.{i}.*`` / ``llm.completions.{i}.*``).

Messages come out as ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``
plus ``tool_calls`` (``[{"id", "name", "arguments"}]``), ``tool_call_id`` or ``name``
when recorded. A view never raises on odd attributes: what cannot be read is left out.

OpenInference puts a ChatPromptTemplate's template on the PROMPT span, not on the LLM
span; pass that span's attributes as ``prompt_attributes`` (the store links the two:
the LLM span's ``component`` / ``prompt_version`` columns, and ``prompt_versions``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gepa_trace.conventions import (
    foreign_template,
    json_value,
    model_of,
    parts_text,
    token_counts,
)

_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant",
          "system": "system", "developer": "system", "tool": "tool", "function": "tool",
          "model": "assistant"}
_INDEXED = re.compile(r"^(\d+)\.(.+)$")


@dataclass(frozen=True)
class Tokens:
    input: int | None = None
    output: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class LLMCallView:
    """One LLM call as the optimizer sees it (see module docstring)."""

    model: str | None = None
    input_messages: list[dict[str, Any]] = field(default_factory=list)
    output_messages: list[dict[str, Any]] = field(default_factory=list)
    template: list[dict[str, str]] | None = None
    variables: dict[str, Any] | None = None
    tokens: Tokens = field(default_factory=Tokens)
    convention: str | None = None  # openinference | gen_ai | gen_ai_indexed | None

    @property
    def system(self) -> str | None:
        texts = [m["content"] for m in self.input_messages if m.get("role") == "system"]
        return "\n".join(texts) if texts else None

    @property
    def output_text(self) -> str:
        return "\n".join(m.get("content") or "" for m in self.output_messages)


def role(value: Any) -> str:
    return _ROLES.get(str(value).lower(), str(value).lower()) if value else "user"


def _indexed(attributes: Mapping[str, Any], prefix: str) -> dict[int, dict[str, Any]]:
    """``prefix.{i}.rest = v`` -> {i: {rest: v}} (keys kept flat below the index)."""
    out: dict[int, dict[str, Any]] = {}
    cut = len(prefix)
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        match = _INDEXED.match(key[cut:])
        if match:
            out.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return dict(sorted(out.items()))


def _sub_indexed(flat: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    return list(_indexed(flat, prefix).values())


def _openinference_messages(attributes: Mapping[str, Any], prefix: str) -> list[dict]:
    messages = []
    for flat in _indexed(attributes, prefix).values():
        msg: dict[str, Any] = {"role": role(flat.get("message.role"))}
        content = flat.get("message.content")
        if content is None:
            content = "\n".join(str(c.get("message_content.text")) for c in
                                _sub_indexed(flat, "message.contents.")
                                if c.get("message_content.text") is not None)
        msg["content"] = content if isinstance(content, str) else str(content or "")
        calls = [{"id": c.get("tool_call.id"), "name": c.get("tool_call.function.name"),
                  "arguments": c.get("tool_call.function.arguments")}
                 for c in _sub_indexed(flat, "message.tool_calls.")]
        if calls:
            msg["tool_calls"] = calls
        for src, dst in (("message.tool_call_id", "tool_call_id"), ("message.name", "name")):
            if flat.get(src):
                msg[dst] = flat[src]
        messages.append(msg)
    return messages


def _genai_messages(value: Any) -> list[dict]:
    value = json_value(value)
    if not isinstance(value, list):
        return []
    messages = []
    for item in value:
        if not isinstance(item, dict):
            continue
        msg: dict[str, Any] = {"role": role(item.get("role"))}
        parts = item.get("parts")
        if parts is None and "content" in item:  # a plain {role, content} message
            parts = [{"type": "text", "content": item["content"]}]
        parts = parts if isinstance(parts, list) else []
        msg["content"] = parts_text(parts)
        calls = [{"id": p.get("id"), "name": p.get("name"), "arguments": p.get("arguments")}
                 for p in parts if isinstance(p, dict) and p.get("type") == "tool_call"]
        if calls:
            msg["tool_calls"] = calls
        responses = [p for p in parts if isinstance(p, dict)
                     and p.get("type") == "tool_call_response"]
        if responses:
            msg["tool_call_id"] = responses[0].get("id")
            if not msg["content"]:
                response = responses[0].get("response", responses[0].get("result"))
                msg["content"] = response if isinstance(response, str) else \
                    ("" if response is None else str(response))
        if item.get("name"):
            msg["name"] = item["name"]
        messages.append(msg)
    return messages


def _indexed_messages(attributes: Mapping[str, Any], prefix: str) -> list[dict]:
    messages = []
    for flat in _indexed(attributes, prefix).values():
        content = flat.get("content")
        msg: dict[str, Any] = {"role": role(flat.get("role")),
                               "content": content if isinstance(content, str)
                               else ("" if content is None else str(content))}
        calls = [{"id": c.get("id"), "name": c.get("name"), "arguments": c.get("arguments")}
                 for c in _sub_indexed(flat, "tool_calls.")]
        if calls:
            msg["tool_calls"] = calls
        if flat.get("tool_call_id"):
            msg["tool_call_id"] = flat["tool_call_id"]
        messages.append(msg)
    return messages


def _template_and_variables(attributes: Mapping[str, Any]) -> tuple[list | None, dict | None]:
    template = json_value(attributes.get("gepa.prompt.template"))
    if isinstance(template, dict):
        template = template.get("messages")
    if not isinstance(template, list):
        template = foreign_template(attributes) if attributes.get(
            "llm.prompt_template.template") else None
    variables = json_value(attributes.get("gepa.prompt.variables")
                           or attributes.get("llm.prompt_template.variables"))
    return template, variables if isinstance(variables, dict) else None


def llm_view(attributes: Mapping[str, Any],
             prompt_attributes: Mapping[str, Any] | None = None) -> LLMCallView:
    """The model, messages, template, variables and tokens of one LLM call's span."""
    convention = None
    inputs = _openinference_messages(attributes, "llm.input_messages.")
    outputs = _openinference_messages(attributes, "llm.output_messages.")
    if inputs or outputs:
        convention = "openinference"
    elif "gen_ai.input.messages" in attributes or "gen_ai.output.messages" in attributes:
        convention = "gen_ai"
        inputs = _genai_messages(attributes.get("gen_ai.input.messages"))
        outputs = _genai_messages(attributes.get("gen_ai.output.messages"))
    else:
        for in_prefix, out_prefix in (("gen_ai.prompt.", "gen_ai.completion."),
                                      ("llm.prompts.", "llm.completions.")):
            inputs = _indexed_messages(attributes, in_prefix)
            outputs = _indexed_messages(attributes, out_prefix)
            if inputs or outputs:
                convention = "gen_ai_indexed"
                break
    instructions = attributes.get("gen_ai.system_instructions")
    if instructions and not any(m["role"] == "system" for m in inputs):
        text = parts_text(json_value(instructions))
        if text:
            inputs = [{"role": "system", "content": text}] + inputs
            convention = convention or "gen_ai"
    template, variables = _template_and_variables(attributes)
    if prompt_attributes is not None and template is None:
        template, found = _template_and_variables(prompt_attributes)
        variables = variables or found
    if template is None and instructions:
        template = foreign_template(attributes)
    model = model_of(attributes)
    return LLMCallView(model=str(model) if model is not None else None,
                       input_messages=inputs, output_messages=outputs, template=template,
                       variables=variables, tokens=Tokens(*token_counts(attributes)),
                       convention=convention)


__all__ = ["LLMCallView", "Tokens", "llm_view"]
