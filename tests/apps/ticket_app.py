"""A second agent of a user's own, not the demo: a support-ticket desk.

`ticket-desk` routes a customer's message to one team (billing, shipping, technical,
account) and writes a one-line reply naming it. Two components, each a
ChatPromptTemplate registered with gt.component(): `triage` picks the team, `reply`
writes the answer to the customer. The output is {"team": ..., "reply": ...}; users
correct the `team` field. Its model is the simulated one (offline); a user would pass a
real litellm model.

The tickets are generated deterministically. Each one carries a word that decides its
team (refund, parcel, crashes, password, ...) inside varied wording, so a prompt can
only learn to route them by keyword, not by remembering tickets. The seed prompt names
the teams but not how to choose: most tickets are misrouted.
"""

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

import gepa_trace as gt
from gepa_trace.lm import LiteLLMChatModel

AGENT = "ticket-desk"
TEAMS = ["billing", "shipping", "technical", "account"]

#: team -> phrasings of a problem; "{item}" is what the customer bought or uses
_PROBLEMS = {
    "billing": ["I was charged twice for {item}",
                "I am still waiting for the refund of {item}",
                "the invoice for {item} shows the wrong amount",
                "my account was charged for {item} after I cancelled",
                "I need a refund, {item} was returned weeks ago",
                "why was my card charged again for {item}",
                "the invoice I got for {item} lists a fee I never agreed to",
                "can I get a copy of the invoice for {item}"],
    "shipping": ["my parcel with {item} never arrived",
                 "the tracking number for {item} does not work",
                 "the delivery of {item} is two weeks late",
                 "the courier left the parcel with {item} at the wrong address",
                 "tracking shows {item} stuck in a depot since Monday",
                 "the delivery date for {item} keeps moving",
                 "the parcel with {item} arrived damaged",
                 "no tracking update for {item} in ten days"],
    "technical": ["the app crashes whenever I open {item}",
                  "I get an error when I pair {item}",
                  "{item} shows an error after the latest update",
                  "the website shows an error page when I look at {item}",
                  "the app crashes on start since I added {item}",
                  "{item} crashes every few minutes",
                  "there is an error code 502 when I sync {item}",
                  "the settings page crashes when I select {item}"],
    "account": ["I forgot my password and cannot see {item}",
                "the login page rejects me so I cannot manage {item}",
                "please change the email address on my account",
                "I cannot reset the password for the account I used for {item}",
                "my login stopped working after I bought {item}",
                "my password was changed without my consent",
                "I want to delete my account and the data about {item}",
                "the login codes never reach me"],
}
#: team -> the words that decide it (each ticket of the team carries one, or names the team)
KEYWORDS = {"billing": ["charged", "refund", "invoice"],
            "shipping": ["parcel", "tracking", "delivery"],
            "technical": ["crashes", "error"],
            "account": ["password", "login", "account"]}
_ITEMS = ["my order", "the headphones", "my subscription", "the smart plug", "the gift card"]
_OPENERS = ["Hi,", "Hello there.", "", "Good morning,", "Hey,"]
_CLOSERS = ["Please help.", "Can you help?", "Thanks.", "Thank you.", ""]


def _ticket(team: str, n: int) -> str:
    problem = _PROBLEMS[team][n % len(_PROBLEMS[team])]
    item = _ITEMS[(n * 3 + TEAMS.index(team)) % len(_ITEMS)]
    text = problem.format(item=item)
    words = [_OPENERS[(n + TEAMS.index(team)) % len(_OPENERS)], text[0].upper() + text[1:] + ".",
             _CLOSERS[(n * 2 + TEAMS.index(team)) % len(_CLOSERS)]]
    return " ".join(w for w in words if w)


#: 64 tickets: 16 per team, each with one of its deciding words
TICKETS = [_ticket(team, n) for n in range(16) for team in TEAMS]
TEAM_OF = {_ticket(team, n): team for n in range(16) for team in TEAMS}

triage = gt.component("triage", ChatPromptTemplate.from_messages([
    ("system", ("Route the customer's message to one team: billing, shipping, technical, "
                "account. Reply with the team name.")),
    ("human", "Message: {message}\nTeam:")]))
reply = gt.component("reply", ChatPromptTemplate.from_messages([
    ("system", ("Write a one-line reply to the customer naming the team that will handle "
                "their message.")),
    ("human", "Customer message: {message}\nTeam: {team}\nReply:")]))


def build_agent(prompts, model="gepa-sim/task"):
    """The agent for a set of prompts: {"message"} -> {"team", "reply"}."""
    llm = LiteLLMChatModel(model=model)
    route = prompts["triage"] | llm | StrOutputParser()
    write = prompts["reply"] | llm | StrOutputParser()

    def run(inputs):
        message = inputs["message"]
        team = route.invoke({"message": message}).strip()
        return {"team": team, "reply": write.invoke({"message": message, "team": team}).strip()}

    return RunnableLambda(run, name=AGENT)
