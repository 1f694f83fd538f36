"""Issue 2, acceptance 3: redaction and capture_content=False are honoured, checked on the
raw bytes of the SQLite database files (main file and write-ahead log)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from test_capture_agent import build_agent, case, span_rows

import gepa_trace as gt
from gepa_trace.store import forget_store

SECRET = "4111-1111-1111-1111"


def file_bytes(url: str) -> bytes:
    path = Path(url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"))
                    if p.exists())


def run_agent_with_secret(inst) -> None:
    """A run whose user input, model output, tool input and error all hold SECRET."""
    question, query, _ = case(0)
    out = build_agent(query, f"Your card {SECRET} is noted.").invoke(
        {"question": f"{question} my card is {SECRET}"})
    assert SECRET in out["answer"]

    @tool
    def charge(card: str) -> str:
        """Charge a card."""
        raise ValueError(f"card {card} declined")

    with pytest.raises(ValueError):
        RunnableLambda(lambda card: charge.invoke({"card": card}), name="pay").invoke(SECRET)
    assert inst.force_flush()


@pytest.fixture
def secret_store(sqlite_url):
    yield sqlite_url
    forget_store(sqlite_url)


def test_redact_is_applied_to_every_recorded_string(secret_store):
    inst = gt.instrument(store=secret_store, service_name="privacy",
                         redact=lambda text: re.sub(r"\d{4}-\d{4}-\d{4}-\d{4}", "[CARD]", text))
    try:
        run_agent_with_secret(inst)
    finally:
        inst.shutdown()
    spans = span_rows(secret_store)
    assert len(spans) > 8
    assert SECRET.encode() not in file_bytes(secret_store)
    text = repr([(s["attributes"], s["events"], s["status_message"]) for s in spans])
    assert "[CARD]" in text  # redacted, not dropped


def test_capture_content_false_stores_structure_without_text(secret_store):
    inst = gt.instrument(store=secret_store, service_name="privacy", capture_content=False)
    try:
        run_agent_with_secret(inst)
    finally:
        inst.shutdown()
    assert SECRET.encode() not in file_bytes(secret_store)
    spans = span_rows(secret_store)
    llm = [s for s in spans if s["span_type"] == "llm"]
    assert [s["component"] for s in llm] == ["planner", "answerer"]
    a = llm[0]["attributes"]
    assert a["llm.input_messages.0.message.role"] == "system"
    assert "llm.input_messages.0.message.content" not in a
    assert (llm[0]["input_tokens"], llm[0]["output_tokens"]) == (30, 4)
    assert not any("input.value" in s["attributes"] or "output.value" in s["attributes"]
                   for s in spans)
    failed = next(s for s in spans if s["span_type"] == "tool" and s["status_code"] == "ERROR")
    assert failed["events"][0]["attributes"] == {"exception.type": "builtins.ValueError"}
    # templates are the developer's, not the user's: still recorded for the optimizer
    assert "gepa.prompt.template" in a


def test_secret_is_in_the_file_when_nothing_hides_it(secret_store):
    # The control for the two tests above: the byte search does find the secret.
    inst = gt.instrument(store=secret_store, service_name="privacy")
    try:
        GenericFakeChatModel(messages=iter([AIMessage(f"card {SECRET}")])).invoke("hi")
        assert inst.force_flush()
    finally:
        inst.shutdown()
    assert SECRET.encode() in file_bytes(secret_store)
