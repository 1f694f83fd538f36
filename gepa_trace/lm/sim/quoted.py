"""How the simulated models read text quoted as untrusted data (not a model).

The prompts quote trace content between ``<untrusted-data source="...">`` and
``</untrusted-data>`` markers (``gepa_trace.lm.untrusted``). The simulated models read
the content inside as they read any text, so they drop the markers before parsing: a
marker on a line of its own goes with its line, one inside a line goes alone. What is
left has the layout the models parse ("# Example N", "## Inputs", "Evidence:" ...).
"""

from __future__ import annotations

import re

_MARKER = r"</?\s*untrusted[\w-]*(?:\s[^>\n]*)?>"
_MARKER_LINE = re.compile(r"(?im)^[ \t]*" + _MARKER + r"[ \t]*(?:\n|\Z)")
_MARKER_INLINE = re.compile(_MARKER, re.IGNORECASE)


def unquote(text: str) -> str:
    """``text`` without the untrusted-data markers (their content kept)."""
    return _MARKER_INLINE.sub("", _MARKER_LINE.sub("", text))


__all__ = ["unquote"]
