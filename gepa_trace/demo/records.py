"""``ComponentRecorder``: a langchain-core callback handler that collects, for one run,
what each prompt component's LLM calls saw and said, as ``ComponentRecord``s.

It is generic (it depends only on langchain-core and on the ``gepa.component`` key that
``gepa_trace.prompts`` binds into a template's metadata), so any in-process evaluator can
use it; it lives here until agent replay (``gepa_trace/replay/``) adopts it.

How an LLM call is attributed: langchain-core hands a prompt template's metadata to the
callbacks of the template's run, and ``prompt | model`` runs the model as a sibling of
the prompt under the same parent. So the recorder remembers, per parent run, the
component of the last prompt that ran there, and gives it to the next chat-model call
under the same parent. A call whose own metadata names a component (a component set
with ``with_config(metadata=...)`` on the whole chain) uses that instead. Calls of no
known component are recorded under ``"<unattributed>"``.
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler

from gepa_trace.optimizer.protocols import ComponentRecord
from gepa_trace.prompts import COMPONENT_KEY

UNATTRIBUTED = "<unattributed>"


def messages_as_text(messages: list[Any]) -> str:
    """Rendered chat messages as ``role: content`` blocks (what the model read)."""
    parts = []
    for msg in messages:
        role = {"human": "user", "ai": "assistant"}.get(getattr(msg, "type", ""),
                                                       getattr(msg, "type", "message"))
        content = getattr(msg, "content", msg)
        if not isinstance(content, str):
            content = str(content)
        parts.append(f"{role}: {content}")
    return "\n\n".join(parts)


class ComponentRecorder(BaseCallbackHandler):
    """Collects ``records``: component name -> ComponentRecords in call order.

    Thread-safe; one recorder per rollout keeps rollouts apart.
    """

    raise_error = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._component_under: dict[UUID | None, str] = {}
        self._open: dict[UUID, ComponentRecord] = {}
        self.records: dict[str, list[ComponentRecord]] = {}
        self.llm_calls = 0

    # a prompt template ran: remember its component for the model call beside it
    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID,
                       parent_run_id: UUID | None = None, metadata: dict | None = None,
                       **kwargs: Any) -> None:
        name = (metadata or {}).get(COMPONENT_KEY)
        if name and (kwargs.get("run_type") == "prompt" or _is_prompt(serialized)):
            with self._lock:
                self._component_under[parent_run_id] = str(name)

    def on_chat_model_start(self, serialized: Any, messages: list[list[Any]], *, run_id: UUID,
                            parent_run_id: UUID | None = None, metadata: dict | None = None,
                            **kwargs: Any) -> None:
        with self._lock:
            name = self._component_under.pop(parent_run_id, None)
            name = name or (metadata or {}).get(COMPONENT_KEY) or UNATTRIBUTED
            rendered = messages_as_text(messages[0] if messages else [])
            self._open[run_id] = ComponentRecord(component=str(name), inputs=rendered,
                                                 output="")
            self.llm_calls += 1

    def on_llm_start(self, serialized: Any, prompts: list[str], *, run_id: UUID,
                     parent_run_id: UUID | None = None, metadata: dict | None = None,
                     **kwargs: Any) -> None:
        with self._lock:
            name = self._component_under.pop(parent_run_id, None)
            name = name or (metadata or {}).get(COMPONENT_KEY) or UNATTRIBUTED
            self._open[run_id] = ComponentRecord(component=str(name),
                                                 inputs="\n\n".join(prompts), output="")
            self.llm_calls += 1

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        texts = []
        for generations in getattr(response, "generations", []) or []:
            for gen in generations:
                texts.append(getattr(gen, "text", "") or "")
        self._close(run_id, output="\n".join(texts))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, error=f"{type(error).__name__}: {error}")

    def _close(self, run_id: UUID, output: str = "", error: str | None = None) -> None:
        with self._lock:
            record = self._open.pop(run_id, None)
            if record is None:
                return
            record.output = output
            record.error = error
            self.records.setdefault(record.component, []).append(record)


def _is_prompt(serialized: Any) -> bool:
    ids = (serialized or {}).get("id") if isinstance(serialized, dict) else None
    return bool(ids) and "prompts" in ids
