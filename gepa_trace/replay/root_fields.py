"""What a production run's root span says: its inputs, its output and its end user.

Attribute values are JSON when they look like JSON and plain text otherwise (a plain
answer), read without json.loads's costly exception for the plain ones.
"""

from __future__ import annotations

import json
from typing import Any


def loads(text: Any) -> Any:
    """``text`` parsed as JSON, or as it is when it is not JSON (a plain answer)."""
    if not isinstance(text, str):
        return text
    # what json.loads would refuse by its first character, without its costly exception
    if text.lstrip(" \t\n\r")[:1] not in _JSON_STARTS:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


#: The first characters of JSON as json.loads reads it (NaN and Infinity included).
_JSON_STARTS = frozenset('{["-0123456789tfnNI')


def inputs_of(attributes: dict[str, Any]) -> dict[str, Any] | None:
    value = loads(attributes.get("input.value"))
    if value is None:
        return None
    if isinstance(value, dict):
        # LangGraph/LCEL wrap inputs as {"input": {...}} in some versions
        return value
    return {"input": value}


#: Root span attributes naming a run's end user, in the order they are read: OpenInference,
#: OpenTelemetry semantic conventions, our own.
USER_ATTRIBUTES = ("user.id", "enduser.id", "gepa.user.id")


def user_of(attributes: dict[str, Any]) -> str | None:
    """The end user of a run from its root span's attributes (None when unknown)."""
    for name in USER_ATTRIBUTES:
        value = attributes.get(name)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None
