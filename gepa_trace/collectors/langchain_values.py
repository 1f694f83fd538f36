"""LangChain objects as span attribute values: messages, documents, prompt values,
arbitrary run inputs/outputs, and prompt templates read back from their serialized form.

Everything here is pure (no OTel, no global state) and cheap on the common path, because
it runs inside every callback of an instrumented agent. Nothing here raises for odd
values: an object we do not know is recorded as its ``str()``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from threading import Lock
from typing import Any

from gepa_trace.prompts.templates import Messages, template_version

# LangChain message ``type`` -> OpenInference role. Chunk types come from streaming.
_ROLES = {
    "human": "user", "ai": "assistant", "system": "system", "tool": "tool",
    "function": "function", "developer": "system",
    "HumanMessageChunk": "user", "AIMessageChunk": "assistant",
    "SystemMessageChunk": "system", "ToolMessageChunk": "tool",
    "FunctionMessageChunk": "function",
}
# Message ``type`` -> the role word of our template format (prompts.templates), used to
# match a prompt's formatted output against an LLM call's input messages.
_MATCH_ROLES = {
    "human": "human", "ai": "ai", "system": "system", "tool": "tool", "function": "function",
    "HumanMessageChunk": "human", "AIMessageChunk": "ai", "SystemMessageChunk": "system",
    "ToolMessageChunk": "tool", "FunctionMessageChunk": "function",
}
_MAX_DEPTH = 8


def dumps(value: Any) -> str:
    """Compact JSON; anything JSON does not know becomes its ``str()``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def role_of(message: Any) -> str:
    kind = getattr(message, "type", "")
    if kind == "chat" or kind == "ChatMessageChunk":
        return str(getattr(message, "role", "user"))
    return _ROLES.get(kind, str(kind))


def content_text(content: Any) -> str:
    """A message's content as text: strings as they are, text parts of a content list
    joined, any other part as JSON (images, tool-use blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                parts.append(dumps(part))
        return "\n".join(parts)
    return "" if content is None else str(content)


def match_key(messages: Sequence[Any]) -> tuple[tuple[str, str], ...]:
    """What identifies a list of messages when matching a prompt's output to the input
    of an LLM call: each message's role and text, nothing else (ids and metadata differ
    between the two sides)."""
    return tuple((_MATCH_ROLES.get(getattr(m, "type", ""), str(getattr(m, "type", ""))),
                  content_text(getattr(m, "content", ""))) for m in messages)


def message_attributes(out: dict[str, Any], prefix: str, message: Any,
                       capture_content: bool) -> None:
    """OpenInference ``{prefix}.message.*`` attributes of one LangChain message."""
    out[f"{prefix}.message.role"] = role_of(message)
    if capture_content:
        out[f"{prefix}.message.content"] = content_text(getattr(message, "content", ""))
    name = getattr(message, "name", None)
    if name:
        out[f"{prefix}.message.name"] = str(name)
    tool_call_id = getattr(message, "tool_call_id", None)
    if tool_call_id:
        out[f"{prefix}.message.tool_call_id"] = str(tool_call_id)
    for j, call in enumerate(getattr(message, "tool_calls", None) or ()):
        base = f"{prefix}.message.tool_calls.{j}.tool_call"
        if call.get("id"):
            out[f"{base}.id"] = str(call["id"])
        out[f"{base}.function.name"] = str(call.get("name", ""))
        if capture_content:
            out[f"{base}.function.arguments"] = dumps(call.get("args", {}))


def messages_attributes(out: dict[str, Any], prefix: str, messages: Sequence[Any],
                        capture_content: bool) -> None:
    for i, message in enumerate(messages):
        message_attributes(out, f"{prefix}.{i}", message, capture_content)


def jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-ready view of a run's input or output (messages as role/content dicts,
    documents as content/metadata, pydantic models dumped, the rest as ``str()``)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth > _MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    if hasattr(value, "content") and hasattr(value, "type") and hasattr(value, "response_metadata"):
        out = {"role": role_of(value), "content": jsonable(value.content, depth + 1)}
        if getattr(value, "tool_calls", None):
            out["tool_calls"] = jsonable(value.tool_calls, depth + 1)
        if getattr(value, "tool_call_id", None):
            out["tool_call_id"] = value.tool_call_id
        return out
    if hasattr(value, "page_content") and hasattr(value, "metadata"):
        return {"page_content": value.page_content, "metadata": jsonable(value.metadata, depth + 1)}
    if hasattr(value, "to_messages") and hasattr(value, "to_string"):  # a PromptValue
        return [jsonable(m, depth + 1) for m in value.to_messages()]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return jsonable(dump(), depth + 1)
        except Exception:  # noqa: BLE001 - a model that cannot dump itself is still recorded
            return str(value)
    return str(value)


def value_attributes(out: dict[str, Any], key: str, value: Any) -> None:
    """``{key}.value`` and ``{key}.mime_type`` (``input``/``output``) of one value."""
    if isinstance(value, str):
        out[f"{key}.value"] = value
        out[f"{key}.mime_type"] = "text/plain"
    else:
        out[f"{key}.value"] = dumps(jsonable(value))
        out[f"{key}.mime_type"] = "application/json"


def document_attributes(out: dict[str, Any], documents: Sequence[Any],
                        capture_content: bool) -> None:
    """OpenInference ``retrieval.documents.{i}.document.*`` of retrieved documents."""
    for i, doc in enumerate(documents):
        base = f"retrieval.documents.{i}.document"
        doc_id = getattr(doc, "id", None)
        if doc_id:
            out[f"{base}.id"] = str(doc_id)
        metadata = getattr(doc, "metadata", None) or {}
        score = metadata.get("score") if isinstance(metadata, Mapping) else None
        if isinstance(score, (int, float)):
            out[f"{base}.score"] = float(score)
        if capture_content:
            out[f"{base}.content"] = str(getattr(doc, "page_content", ""))
            if metadata:
                out[f"{base}.metadata"] = dumps(jsonable(metadata))


def token_counts(response: Any) -> dict[str, int]:
    """``llm.token_count.*`` from an LLMResult: the message's usage_metadata (standard in
    langchain-core), else the provider's ``llm_output`` token_usage."""
    prompt = completion = total = 0
    found = False
    for generations in getattr(response, "generations", None) or ():
        for gen in generations:
            usage = getattr(getattr(gen, "message", None), "usage_metadata", None)
            if usage:
                found = True
                prompt += int(usage.get("input_tokens") or 0)
                completion += int(usage.get("output_tokens") or 0)
                total += int(usage.get("total_tokens") or 0)
    if not found:
        usage = (getattr(response, "llm_output", None) or {}).get("token_usage") or {}
        if not isinstance(usage, Mapping) or not usage:
            return {}
        prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        total = int(usage.get("total_tokens") or 0)
    return {"llm.token_count.prompt": prompt, "llm.token_count.completion": completion,
            "llm.token_count.total": total or prompt + completion}


# --- templates ---------------------------------------------------------------------------

_ROLE_WORDS = {"system": "system", "human": "human", "user": "human", "ai": "ai",
               "assistant": "ai", "chat": "human"}


def _message_role(class_name: str, kwargs: Mapping[str, Any]) -> str:
    # Same rule as prompts.templates._role_of_message_template, on the serialized class
    # name: the version hash must come out identical on both sides.
    lowered = class_name.lower()
    for prefix, role in (("system", "system"), ("human", "human"), ("ai", "ai")):
        if lowered.startswith(prefix):
            return role
    role = kwargs.get("role") or kwargs.get("type")
    return _ROLE_WORDS.get(str(role), "human")


def template_from_serialized(serialized: Mapping[str, Any] | None) -> Messages | None:
    """The messages of a prompt template, read from the ``serialized`` dict LangChain
    hands to ``on_chain_start``, in the format of ``prompts.messages_of_template``
    (so ``template_version`` of the result is the component's version). ``None`` for
    templates we cannot read exactly (e.g. multimodal message templates)."""
    if not isinstance(serialized, Mapping):
        return None
    ident = serialized.get("id") or ()
    kwargs = serialized.get("kwargs") or {}
    kind = ident[-1] if ident else ""
    if kind == "PromptTemplate":
        text = kwargs.get("template")
        return [{"role": "human", "content": text}] if isinstance(text, str) else None
    if kind != "ChatPromptTemplate":
        return None
    out: Messages = []
    for msg in kwargs.get("messages") or ():
        msg_ident = msg.get("id") or ()
        msg_kind = msg_ident[-1] if msg_ident else ""
        msg_kwargs = msg.get("kwargs") or {}
        if msg_kind == "MessagesPlaceholder":
            out.append({"role": "placeholder", "variable": str(msg_kwargs.get("variable_name"))})
            continue
        inner = msg_kwargs.get("prompt")
        if isinstance(inner, Mapping):
            text = (inner.get("kwargs") or {}).get("template")
        elif inner is None:
            text = msg_kwargs.get("content")  # a fixed message inside the template
        else:
            return None
        if not isinstance(text, str):
            return None
        out.append({"role": _message_role(msg_kind, msg_kwargs), "content": text})
    return out or None


class TemplateCache:
    """serialized prompt -> (messages JSON, version), computed once per prompt object.

    langchain-core caches a prompt's serialized dict on the prompt itself, so the dict's
    identity stands for the prompt; we keep a reference to each key so its id is never
    reused while cached.
    """

    def __init__(self, size: int = 512):
        self._size = size
        self._entries: OrderedDict[int, tuple[Any, tuple[str, str] | None]] = OrderedDict()
        self._lock = Lock()

    def get(self, serialized: Any) -> tuple[str, str] | None:
        key = id(serialized)
        entry = self._entries.get(key)
        if entry is not None and entry[0] is serialized:
            return entry[1]
        messages = template_from_serialized(serialized)
        value = (dumps(messages), template_version(messages)) if messages else None
        with self._lock:
            self._entries[key] = (serialized, value)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return value


def redacted(attributes: dict[str, Any], redact: Callable[[str], str]) -> dict[str, Any]:
    """Apply ``redact`` to every string value (JSON-valued attributes as their text).

    A redactor that fails must not leak what it was meant to hide: the value is replaced.
    """
    for key, value in attributes.items():
        if isinstance(value, str):
            try:
                attributes[key] = str(redact(value))
            except Exception:  # noqa: BLE001 - a failed redactor must not leak
                attributes[key] = "[redaction failed]"
    return attributes
