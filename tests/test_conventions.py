"""Readers of foreign span conventions: derived columns, the LLM call view, the
PROMPT/LLM join, and `gepa-trace ingest` of GenAI spans from files."""

from __future__ import annotations

import json

import sqlalchemy as sa
from click.testing import CliRunner

from gepa_trace.cli import main
from gepa_trace.collectors.views import llm_view
from gepa_trace.conventions import derive
from gepa_trace.prompts.templates import template_version
from gepa_trace.store import open_store
from gepa_trace.store.spans import write_spans

GENAI_STRUCTURED = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4.1-mini",
    "gen_ai.response.model": "gpt-4.1-mini-2025-04-14",
    "gen_ai.usage.input_tokens": 52,
    "gen_ai.usage.output_tokens": 9,
    "gen_ai.system_instructions": json.dumps([{"type": "text",
                                               "content": "You are a travel planner."}]),
    "gen_ai.input.messages": json.dumps([
        {"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1",
                                         "name": "weather", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1",
                                    "response": "rainy"}]}]),
    "gen_ai.output.messages": json.dumps([
        {"role": "assistant", "parts": [{"type": "text", "content": "Rainy, take a coat."}],
         "finish_reason": "stop"}]),
}

GENAI_INDEXED = {
    "gen_ai.system": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.usage.prompt_tokens": 30,
    "gen_ai.usage.completion_tokens": 4,
    "llm.request.type": "chat",
    "gen_ai.prompt.0.role": "system",
    "gen_ai.prompt.0.content": "Answer briefly.",
    "gen_ai.prompt.1.role": "user",
    "gen_ai.prompt.1.content": "Capital of France?",
    "gen_ai.completion.0.role": "assistant",
    "gen_ai.completion.0.content": "Paris.",
    "gen_ai.completion.0.finish_reason": "stop",
    "traceloop.workflow.name": "geo-agent",
    "traceloop.entity.path": "answer_question",
}


def test_genai_structured_view_has_messages_tool_calls_model_and_tokens():
    view = llm_view(GENAI_STRUCTURED)
    assert view.convention == "gen_ai"
    assert [m["role"] for m in view.input_messages] == ["system", "user", "assistant", "tool"]
    assert view.input_messages[0]["content"] == "You are a travel planner."
    assert view.input_messages[2]["tool_calls"] == [{"id": "c1", "name": "weather",
                                                     "arguments": {"city": "Paris"}}]
    assert view.input_messages[3] == {"role": "tool", "content": "rainy", "tool_call_id": "c1"}
    assert view.output_messages == [{"role": "assistant", "content": "Rainy, take a coat."}]
    assert view.model == "gpt-4.1-mini"
    assert (view.tokens.input, view.tokens.output, view.tokens.total) == (52, 9, 61)
    assert view.template == [{"role": "system", "content": "You are a travel planner."}]


def test_genai_indexed_view_and_derived_columns():
    view = llm_view(GENAI_INDEXED)
    assert view.convention == "gen_ai_indexed"
    assert view.input_messages == [{"role": "system", "content": "Answer briefly."},
                                   {"role": "user", "content": "Capital of France?"}]
    assert view.output_text == "Paris."
    derived = derive(GENAI_INDEXED, name="openai.chat", resource={"service.name": "svc"})
    assert derived["span_type"] == "llm" and derived["model"] == "gpt-4o"
    assert (derived["input_tokens"], derived["output_tokens"]) == (30, 4)
    assert derived["agent"] == "geo-agent"  # traceloop.workflow.name beats service.name
    assert derived["component"] == "answer_question"


def test_openinference_view_reads_flattened_messages_and_tool_calls():
    attrs = {"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o",
             "llm.input_messages.0.message.role": "system",
             "llm.input_messages.0.message.content": "Plan.",
             "llm.input_messages.1.message.role": "user",
             "llm.input_messages.1.message.contents.0.message_content.text": "Go",
             "llm.input_messages.10.message.role": "user",
             "llm.input_messages.10.message.content": "tenth",
             "llm.output_messages.0.message.role": "assistant",
             "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "search",
             "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": "{}",
             "llm.token_count.prompt": 5, "llm.token_count.completion": 2,
             "gepa.prompt.template": json.dumps([{"role": "system", "content": "Plan."}]),
             "gepa.prompt.variables": json.dumps({"q": "Go"})}
    view = llm_view(attrs)
    assert [m["content"] for m in view.input_messages] == ["Plan.", "Go", "tenth"]
    assert view.output_messages[0]["tool_calls"][0]["name"] == "search"
    assert view.template == [{"role": "system", "content": "Plan."}]
    assert view.variables == {"q": "Go"} and view.tokens.total == 7


def test_openllmetry_task_spans_are_chains_named_by_entity():
    derived = derive({"traceloop.span.kind": "task", "traceloop.entity.name": "retrieve",
                      "traceloop.workflow.name": "rag"}, name="retrieve.task")
    assert (derived["span_type"], derived["component"], derived["agent"]) == \
        ("chain", "retrieve", "rag")


def test_component_identity_order_explicit_then_run_name_then_node_then_hash():
    base = {"openinference.span.kind": "PROMPT",
            "llm.prompt_template.template": "You plan.",
            "output.value": json.dumps({"messages": [{"type": "system", "content": "You plan."}]})}
    node = {"metadata": json.dumps({"langgraph_node": "planner"})}
    explicit = {"metadata": json.dumps({"gepa.component": "chosen", "langgraph_node": "n"})}
    version = template_version([{"role": "system", "content": "You plan."}])
    assert derive(base | explicit, name="mine")["component"] == "chosen"
    assert derive(base | node, name="my_prompt")["component"] == "my_prompt"
    assert derive(base | node, name="ChatPromptTemplate")["component"] == "planner"
    hashed = derive(base, name="ChatPromptTemplate")
    assert hashed["component"] == f"prompt-{version}" and hashed["prompt_version"] == version


def _oi_spans(trace: str, parent: str, prompt_id: str, llm_id: str) -> tuple[dict, dict]:
    common = {"trace_id": trace, "parent_span_id": parent, "kind": "INTERNAL", "status_code": "OK",
              "resource": {"service.name": "trip-agent"}}
    prompt = dict(common, span_id=prompt_id, name="ChatPromptTemplate", start_ns=10, end_ns=20,
                  attributes={"openinference.span.kind": "PROMPT",
                              "llm.prompt_template.template": "You plan trips.",
                              "metadata": json.dumps({"langgraph_node": "planner"}),
                              "output.value": json.dumps({"messages": [
                                  {"type": "system", "content": "You plan trips."}]})})
    llm = dict(common, span_id=llm_id, name="FakeListChatModel", start_ns=30, end_ns=40,
               attributes={"openinference.span.kind": "LLM",
                           "metadata": json.dumps({"langgraph_node": "planner"}),
                           "llm.input_messages.0.message.role": "system",
                           "llm.input_messages.0.message.content": "You plan trips."})
    return prompt, llm


def _linked(store, span_id):
    with store.read() as conn:
        return tuple(conn.execute(sa.text("SELECT component, prompt_version FROM spans "
                                          "WHERE span_id = :s"), {"s": span_id}).one())


def test_llm_span_takes_its_sibling_prompt_template_in_any_arrival_order(store_url):
    store = open_store(store_url)
    version = template_version([{"role": "system", "content": "You plan trips."}])
    same = _oi_spans("a" * 32, "1" * 16, "2" * 16, "3" * 16)
    write_spans(store, list(same))
    assert _linked(store, "3" * 16) == ("planner", version)
    prompt_first = _oi_spans("b" * 32, "1" * 16, "4" * 16, "5" * 16)
    write_spans(store, [prompt_first[0]])
    write_spans(store, [prompt_first[1]])
    assert _linked(store, "5" * 16) == ("planner", version)
    llm_first = _oi_spans("c" * 32, "1" * 16, "6" * 16, "7" * 16)
    write_spans(store, [llm_first[1]])
    assert _linked(store, "7" * 16) == ("planner", None)  # node name until the PROMPT comes
    write_spans(store, [llm_first[0]])
    assert _linked(store, "7" * 16) == ("planner", version)
    with store.read() as conn:
        template = conn.execute(sa.text("SELECT template FROM prompt_versions WHERE "
                                        "component = 'planner'")).scalar_one()
    assert json.loads(template) == [{"role": "system", "content": "You plan trips."}]


def _otlp_json_line(attributes: dict, span_id: str, name: str) -> str:
    def value(v):
        if isinstance(v, bool):
            return {"boolValue": v}
        if isinstance(v, int):
            return {"intValue": str(v)}
        return {"stringValue": v}

    return json.dumps({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name",
                                     "value": {"stringValue": "genai-app"}}]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": [{
            "traceId": "ab" * 16, "spanId": span_id, "name": name, "kind": 3,
            "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000001000000000",
            "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items()]}]}]}]})


def test_ingest_genai_files_in_both_forms_shows_messages_model_and_tokens(store_url, tmp_path):
    jsonl = tmp_path / "spans.jsonl"
    jsonl.write_text(_otlp_json_line(GENAI_STRUCTURED, "01" * 8, "chat gpt-4.1-mini") + "\n"
                     + _otlp_json_line(GENAI_INDEXED, "02" * 8, "openai.chat") + "\n")
    from gepa_trace.collectors.otlp import read_otlp_file

    assert len(read_otlp_file(jsonl)) == 2  # one request per line
    pb = tmp_path / "one.pb"
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    pb.write_bytes(ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[
        ScopeSpans(spans=[Span(trace_id=b"\xcd" * 16, span_id=b"\x03" * 8, name="pb",
                               start_time_unix_nano=5, end_time_unix_nano=6, attributes=[
                                   KeyValue(key="gen_ai.request.model",
                                            value=AnyValue(string_value="claude")),
                                   KeyValue(key="gen_ai.usage.input_tokens",
                                            value=AnyValue(int_value=11))])])])]
    ).SerializeToString())
    result = CliRunner().invoke(main, ["ingest", str(jsonl), str(pb), "--store", store_url,
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["spans"] == 3
    store = open_store(store_url)
    with store.read() as conn:
        rows = {r.span_id: r for r in conn.execute(sa.text(
            "SELECT span_id, model, input_tokens, output_tokens, span_type, attributes "
            "FROM spans"))}
    structured, indexed, proto = rows["01" * 8], rows["02" * 8], rows["03" * 8]
    assert (structured.model, structured.input_tokens, structured.output_tokens) == \
        ("gpt-4.1-mini", 52, 9)
    assert (indexed.model, indexed.input_tokens, indexed.output_tokens) == ("gpt-4o", 30, 4)
    assert (proto.model, proto.input_tokens, proto.span_type) == ("claude", 11, "llm")
    assert json.loads(structured.attributes) == GENAI_STRUCTURED  # stored as received
    instructions = [{"role": "system", "content": "You are a travel planner."}]
    with store.read() as conn:
        component, version = conn.execute(sa.text(
            "SELECT component, prompt_version FROM spans WHERE span_id = :s"),
            {"s": "01" * 8}).one()
        template = conn.execute(sa.text("SELECT template FROM prompt_versions WHERE "
                                        "version = :v"), {"v": version}).scalar_one()
    assert version == template_version(instructions) and component == f"prompt-{version}"
    assert json.loads(template) == instructions  # system instructions = the template
    view = llm_view(json.loads(structured.attributes))
    assert view.input_messages[1] == {"role": "user", "content": "Weather in Paris?"}
    assert llm_view(json.loads(indexed.attributes)).output_text == "Paris."


def test_ingest_names_the_bad_file_in_one_line_and_keeps_the_good_ones(store_url, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(_otlp_json_line({"gen_ai.request.model": "m"}, "04" * 8, "x"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceSpans": [ oops')
    noise = tmp_path / "noise.bin"
    noise.write_bytes(b"hello, not protobuf at all")
    result = CliRunner().invoke(main, ["ingest", str(good), str(bad), str(noise),
                                       "--store", store_url])
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2
    assert str(bad) in errors[0] and "JSON" in errors[0]
    assert str(noise) in errors[1]
    assert "1 spans from 1 requests in 1 files" in result.stdout
