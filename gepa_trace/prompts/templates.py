"""Component templates: messages as plain data, their content-hash versions, and the
binding of a LangChain ``ChatPromptTemplate`` to a component name.

A template is a list of messages ``{"role": ..., "content": ...}`` (roles: system,
human, ai) or ``{"role": "placeholder", "variable": name}`` for a MessagesPlaceholder.
Its version is a hash of exactly that list, so the same text is the same version
everywhere: in the exporter, in the optimizer and in exported files.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Iterable
from typing import Any

from gepa_trace.errors import ConfigError

COMPONENT_KEY = "gepa.component"
VERSION_KEY = "gepa.prompt.version"

Messages = list[dict[str, str]]

_ROLE_OF_TYPE = {"system": "system", "human": "human", "user": "human", "ai": "ai",
                 "assistant": "ai", "chat": "human"}


def template_version(messages: Messages) -> str:
    """The content hash (12 hex digits) that names a template version."""
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def normalize_messages(value: Any) -> Messages:
    """Messages from a ChatPromptTemplate, a list of dicts/tuples, or one string (system)."""
    if isinstance(value, str):
        return [{"role": "system", "content": value}]
    if _is_langchain_prompt(value):
        return messages_of_template(value)
    if isinstance(value, dict) and "messages" in value:
        value = value["messages"]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"a template must be a string, a ChatPromptTemplate or a non-empty "
                          f"list of messages, not {type(value).__name__}")
    out: Messages = []
    for i, msg in enumerate(value):
        if isinstance(msg, (list, tuple)) and len(msg) == 2:
            msg = {"role": msg[0], "content": msg[1]}
        if not isinstance(msg, dict):
            raise ConfigError(f"message {i} of the template is a {type(msg).__name__}, "
                              "expected {'role': ..., 'content': ...}")
        role = str(msg.get("role", ""))
        if role == "placeholder":
            out.append({"role": "placeholder", "variable": str(msg["variable"])})
            continue
        if role not in _ROLE_OF_TYPE:
            raise ConfigError(f"message {i} of the template has unknown role {role!r}")
        if not isinstance(msg.get("content"), str):
            raise ConfigError(f"message {i} of the template has no text content")
        out.append({"role": _ROLE_OF_TYPE[role], "content": msg["content"]})
    return out


def _is_langchain_prompt(value: Any) -> bool:
    return type(value).__module__.startswith("langchain_core.prompts")


def messages_of_template(prompt: Any) -> Messages:
    """The messages of a langchain-core ChatPromptTemplate (or PromptTemplate) as data."""
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate

    if isinstance(prompt, PromptTemplate):
        return [{"role": "human", "content": prompt.template}]
    if not isinstance(prompt, ChatPromptTemplate):
        raise ConfigError(f"cannot read a template from {type(prompt).__name__}")
    out: Messages = []
    for msg in prompt.messages:
        if isinstance(msg, MessagesPlaceholder):
            out.append({"role": "placeholder", "variable": msg.variable_name})
            continue
        inner = getattr(msg, "prompt", None)
        text = getattr(inner, "template", None)
        if text is None:  # a fixed BaseMessage inside the template
            text = msg.content if isinstance(getattr(msg, "content", None), str) else str(msg)
        out.append({"role": _role_of_message_template(msg), "content": text})
    return out


def _role_of_message_template(msg: Any) -> str:
    name = type(msg).__name__.lower()
    for prefix, role in (("system", "system"), ("human", "human"), ("ai", "ai")):
        if name.startswith(prefix):
            return role
    role = getattr(msg, "role", None) or getattr(msg, "type", None)
    return _ROLE_OF_TYPE.get(str(role), "human")


def to_chat_prompt(messages: Messages, component: str | None = None):
    """A ChatPromptTemplate for ``messages``, tagged with its component and version."""
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

    parts: list[Any] = []
    for msg in messages:
        if msg["role"] == "placeholder":
            parts.append(MessagesPlaceholder(msg["variable"]))
        else:
            parts.append((msg["role"], msg["content"]))
    prompt = ChatPromptTemplate.from_messages(parts)
    if component is not None:
        prompt = bind_component(prompt, component, messages)
    return prompt


def bind_component(prompt: Any, name: str, messages: Messages | None = None):
    """A copy of ``prompt`` whose runs are attributed to component ``name``.

    The component and version travel as the template's metadata, which langchain-core
    hands to every callback of the prompt's run; that is how the instrumentation knows
    which component produced an LLM call's input messages.
    """
    if not name or not isinstance(name, str):
        raise ConfigError("component name must be a non-empty string")
    messages = messages if messages is not None else messages_of_template(prompt)
    metadata = dict(getattr(prompt, "metadata", None) or {})
    metadata[COMPONENT_KEY] = name
    metadata[VERSION_KEY] = template_version(messages)
    return prompt.model_copy(update={"metadata": metadata})


def component(name: str, template: Any):
    """Declare a prompt of the agent as the optimizable component ``name``.

    ``template`` is a ChatPromptTemplate, a list of messages or an instruction string;
    the result is a ChatPromptTemplate to use in place of the original.
    """
    if _is_langchain_prompt(template):
        return bind_component(template, name)
    return to_chat_prompt(normalize_messages(template), component=name)


_FIELD = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")


def template_variables(text: str) -> set[str]:
    """The f-string variables a message text uses (``{question}``, not ``{{literal}}``)."""
    try:
        return {field for _lit, field, _spec, _conv in string.Formatter().parse(text)
                if field}
    except ValueError:
        return set(_FIELD.findall(text))


def escape_braces(text: str, keep: Iterable[str]) -> str:
    """Escape every brace in ``text`` except those of the variables in ``keep``.

    Rewritten prompts often contain JSON or set notation; unescaped, those braces would
    break f-string formatting of the template.
    """
    keep = set(keep)
    out, i = [], 0
    while i < len(text):
        match = _FIELD.match(text, i) if text[i] == "{" else None
        if match and match.group(1) in keep:
            out.append(match.group(0))
            i = match.end()
            continue
        if text.startswith("{{", i) or text.startswith("}}", i):
            out.append(text[i:i + 2])
            i += 2
            continue
        ch = text[i]
        out.append(ch * 2 if ch in "{}" else ch)
        i += 1
    return "".join(out)
