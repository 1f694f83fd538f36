"""A user's own agent, written as the README tells a new user to: not the demo.

`people-desk` answers "In which country was X born?" from its own little directory of
people. Two components, each a ChatPromptTemplate registered with gt.component(): the
`picker` copies the directory entry about the person, the `replier` answers from it.
Its models are the simulated ones (offline); a user would pass a real litellm model.
"""

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

import gepa_trace as gt
from gepa_trace.lm import LiteLLMChatModel

AGENT = "people-desk"

_FIRST = ["Ada", "Bruno", "Carla", "Dmitri", "Elena", "Femi", "Greta", "Hiro", "Ines", "Jonas",
          "Kofi", "Lena", "Marco", "Nadia", "Omar", "Paula", "Quentin", "Rosa", "Sven", "Tariq"]
_LAST = ["Quill", "Falk", "Mendes"]
_PLACES = [("London", "England"), ("Munich", "Germany"), ("Porto", "Portugal"),
           ("Kazan", "Russia"), ("Seville", "Spain"), ("Lagos", "Nigeria"),
           ("Uppsala", "Sweden"), ("Osaka", "Japan"), ("Bergen", "Norway"),
           ("Kumasi", "Ghana"), ("Turin", "Italy"), ("Beirut", "Lebanon"), ("Cairo", "Egypt"),
           ("Brno", "Czechia"), ("Lyon", "France"), ("Recife", "Brazil"), ("Aarhus", "Denmark"),
           ("Lahore", "Pakistan"), ("Mysore", "India"), ("Split", "Croatia")]
#: (name, birth date, city, country): 60 people of the directory
PEOPLE = [(f"{first} {last}", f"{(i * 7) % 28 + 1:02d}/{(i * 5) % 12 + 1:02d}/{1900 + i}",
           *_PLACES[(i * 3 + j) % len(_PLACES)])
          for j, last in enumerate(_LAST) for i, first in enumerate(_FIRST)]
QUESTIONS = [f"In which country was {name} born?" for name, *_ in PEOPLE]
ANSWERS = {f"In which country was {name} born?": country for name, _d, _c, country in PEOPLE}


def lookup(question: str) -> str:
    """The directory entries that mention the person asked about, numbered."""
    hits = [f"{name} was born on {day} in {city}, {country}."
            for name, day, city, country in PEOPLE if name in question]
    return "\n".join(f"[{i}] {text}" for i, text in enumerate(hits, 1)) or "(none)"


picker = gt.component("picker", ChatPromptTemplate.from_messages([
    ("system", ("You select evidence for a help desk. Copy the directory entry that is "
                "most useful for answering the question.")),
    ("human", "Question: {question}\nPassages:\n{passages}\nSelected passage:")]))
replier = gt.component("replier", ChatPromptTemplate.from_messages([
    ("system", "Answer the question using the evidence."),
    ("human", "Question: {question}\nEvidence:\n- {evidence}\nAnswer:")]))


def build_agent(prompts, model="gepa-sim/task"):
    """The agent for a set of prompts: {"question"} -> the answer text."""
    llm = LiteLLMChatModel(model=model)
    pick = prompts["picker"] | llm | StrOutputParser()
    reply = prompts["replier"] | llm | StrOutputParser()

    def run(inputs):
        question = inputs["question"]
        evidence = pick.invoke({"question": question, "passages": lookup(question)})
        return reply.invoke({"question": question, "evidence": evidence.strip()}).strip()

    return RunnableLambda(run, name=AGENT)


def metric(example, output, trace):
    """1 when the answer is the expected country, with a sentence saying what went wrong."""
    expected = example.expected
    if expected is None:
        return gt.Score(0.0, "no correct answer is known for this question")
    if str(output).strip().rstrip(".").lower() == str(expected).strip().lower():
        return gt.Score(1.0, "correct")
    return gt.Score(0.0, f"expected the country {expected!r}, got {output!r}")
