"""The example agent: multi-hop question answering over the demo world, in LangGraph.

Graph (nodes named after the components they run)::

    START -> query_writer -> retrieve -> evidence_selector --(hop < 2)--> query_writer
                                                           \\--(hop = 2)--> answerer -> END

Each LLM step is ``prompts[component] | chat_model | StrOutputParser()``; the prompt is a
ChatPromptTemplate from the PromptSet, so its runs carry the ``gepa.component`` metadata
that tracing reads. ``retrieve`` calls a langchain-core tool
(``search_knowledge_base``) that returns four numbered passages, distractors included.

The output of a run is ``{"answer", "queries", "passages", "evidence"}``; the metric
reads the queries and the evidence to say which step went wrong.
"""

from __future__ import annotations

from typing import Any, TypedDict

from gepa_trace.demo.world import render_passages, world
from gepa_trace.prompts import PromptSet

AGENT_NAME = "demo-qa"
COMPONENTS = ("query_writer", "evidence_selector", "answerer")
HOPS = 2

_HUMAN = {
    "query_writer": "Question: {question}\nNotes so far: {notes}\nSearch query:",
    "evidence_selector": ("Question: {question}\nNotes so far: {notes}\nSearch query: {query}\n"
                          "Passages:\n{passages}\nSelected passage:"),
    "answerer": "Question: {question}\nEvidence:\n{evidence}\nAnswer:",
}

_SEED_INSTRUCTIONS = {
    "query_writer": ("You write search queries for a question-answering assistant. Write a "
                     "short search query for the information needed next to answer the "
                     "question. Reply with the query alone."),
    "evidence_selector": ("You select evidence for a question-answering assistant. Copy the "
                          "retrieved passage that is most useful for answering the question."),
    "answerer": "Answer the question using the evidence.",
}

_BEST_RULES = {
    "query_writer": [
        ("Once the notes name the founder, search for that person by name, not for the "
         "company from the question again."),
    ],
    "evidence_selector": [
        ("Pick the passage that states the fact being looked for (who founded the company, "
         "or when and where the person was born); skip news passages that only mention the name."),
        ("Ignore passages about a cousin or other relative of the person: choose the passage "
         "about the person themself."),
    ],
    "answerer": [
        "Answer with only the name or value, never a full sentence.",
        "If the question asks for a country, give the country, not the city.",
        "Dates are written day/month/year: the first number is the day.",
        "When asked for a year, give only the four-digit year.",
        "If the evidence does not state the answer, reply unknown instead of guessing.",
    ],
}


def _prompt_set(instructions: dict[str, str]) -> PromptSet:
    return PromptSet({name: [{"role": "system", "content": instructions[name]},
                             {"role": "human", "content": _HUMAN[name]}]
                      for name in COMPONENTS}, agent=AGENT_NAME)


#: Plain first drafts: say what each step is for, nothing about the world's traps.
SEED_PROMPTS = _prompt_set(_SEED_INSTRUCTIONS)

#: Hand-written: the seed drafts plus one rule for each trap of the world.
BEST_PROMPTS = _prompt_set({
    name: _SEED_INSTRUCTIONS[name] + "\n\nRules:\n" + "\n".join(f"- {r}" for r in rules)
    for name, rules in _BEST_RULES.items()})


def search_tool(world_seed: int = 0, k: int = 4, poison: Any = None):
    """The retrieval tool over the demo world: a langchain-core StructuredTool. With a
    ``demo.poison.Poison`` placing its payload in tool output, a search that names one of
    its target companies (or their founders) also returns the planted passage, last."""
    from langchain_core.tools import StructuredTool

    w = world(world_seed)

    def search_knowledge_base(query: str) -> str:
        """Search the knowledge base; returns numbered passages, best match first."""
        found = w.search(query, k=k)
        if poison is not None:
            found = found + poison.planted(w, query)
        return render_passages(found)

    return StructuredTool.from_function(search_knowledge_base, name="search_knowledge_base")


def resolve_chat_model(model: Any = "gepa-sim/task", chat_model: Any = None):
    """``chat_model`` if given, ``model`` if it already is a chat model, else a
    ``LiteLLMChatModel`` for the litellm model string ``model``."""
    if chat_model is not None:
        return chat_model
    if not isinstance(model, str):
        return model
    from gepa_trace.lm.chat_model import LiteLLMChatModel

    return LiteLLMChatModel(model=model)


class AgentState(TypedDict, total=False):
    question: str
    hop: int
    notes: list[str]
    queries: list[str]
    passages: list[str]
    evidence: list[str]
    answer: str


def build_agent(prompts: PromptSet, *, model: Any = "gepa-sim/task", chat_model: Any = None,
                world_seed: int = 0, poison: Any = None):
    """The agent for ``prompts`` as a compiled LangGraph: ``{"question": str}`` in,
    ``{"answer": str, "queries": [...], "passages": [...], "evidence": [...], ...}`` out.

    ``model`` is a litellm model string (default the simulated task model) or a
    langchain chat model; ``chat_model`` overrides it. ``poison`` (a
    ``demo.poison.Poison``, for attack tests) plants passages in the search tool.
    """
    from langchain_core.output_parsers import StrOutputParser
    from langgraph.graph import END, START, StateGraph

    missing = [c for c in COMPONENTS if c not in prompts]
    if missing:
        from gepa_trace.errors import ConfigError

        raise ConfigError(f"the prompt set has no component {', '.join(missing)} "
                          f"(the demo agent needs {', '.join(COMPONENTS)})")
    llm = resolve_chat_model(model, chat_model)
    chains = {name: prompts[name] | llm | StrOutputParser() for name in COMPONENTS}
    tool = search_tool(world_seed, poison=poison)

    def notes_text(state: AgentState) -> str:
        return "\n".join(state.get("notes") or []) or "(none)"

    def query_writer(state: AgentState) -> dict:
        query = chains["query_writer"].invoke(
            {"question": state["question"], "notes": notes_text(state)})
        query = query.strip().splitlines()[0].strip() if query.strip() else ""
        return {"queries": [*(state.get("queries") or []), query]}

    def retrieve(state: AgentState) -> dict:
        found = tool.invoke({"query": state["queries"][-1]})
        return {"passages": [*(state.get("passages") or []), found]}

    def evidence_selector(state: AgentState) -> dict:
        chosen = chains["evidence_selector"].invoke(
            {"question": state["question"], "notes": notes_text(state),
             "query": state["queries"][-1], "passages": state["passages"][-1]}).strip()
        return {"notes": [*(state.get("notes") or []), chosen],
                "evidence": [*(state.get("evidence") or []), chosen],
                "hop": state.get("hop", 0) + 1}

    def answerer(state: AgentState) -> dict:
        evidence = "\n".join(f"- {e}" for e in state.get("evidence") or []) or "(none)"
        text = chains["answerer"].invoke({"question": state["question"], "evidence": evidence})
        return {"answer": text.strip()}

    graph = StateGraph(AgentState)
    graph.add_node("query_writer", query_writer)
    graph.add_node("retrieve", retrieve)
    graph.add_node("evidence_selector", evidence_selector)
    graph.add_node("answerer", answerer)
    graph.add_edge(START, "query_writer")
    graph.add_edge("query_writer", "retrieve")
    graph.add_edge("retrieve", "evidence_selector")
    graph.add_conditional_edges(
        "evidence_selector", lambda s: "query_writer" if s.get("hop", 0) < HOPS else "answerer",
        ["query_writer", "answerer"])
    graph.add_edge("answerer", END)
    return graph.compile(name=AGENT_NAME)
