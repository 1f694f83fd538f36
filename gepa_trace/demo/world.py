"""The simulated world of the example agent: a knowledge base of companies, their
founders, cities and countries, the passages that state those facts, a keyword
retriever over them, and the questions asked about them.

Everything is generated deterministically from a seed (``World.generate(seed)``), so the
same seed gives the same facts, passages and questions on every machine. The task model
(``gepa-sim/task``) never sees this module: facts reach it only through the passages the
retriever puts in its prompt. The metric reads the world to explain failures.

Question kinds (all about the founder of a company, or the company itself):

| kind    | example                                               | hops | answer      |
|---------|-------------------------------------------------------|------|-------------|
| country | In which country was the founder of Velora Works born? | 2    | a country   |
| city    | In which city was the founder of Velora Works born?    | 2    | a city      |
| month   | In which month was the founder of Velora Works born?   | 2    | a month     |
| founder | Who founded Velora Works?                              | 1    | a person    |
| year    | In which year was Velora Works founded?                | 1    | a year      |

Some founders' place of birth is not recorded (their passage says so): the answer to a
country or city question about them is ``unknown``.

Passages that make the agent's steps matter (the seed prompts stumble on them):
- a company passage phrased with the company first ("X was founded on ... by P") puts
  the company, not the founder, at the head of the notes;
- a news passage about the company ("X opened an office in ...") competes with the
  founding passage for the company's name;
- a cousin's passage ("Q, a cousin of P, was born ...") competes with the founder's own;
- dates are written day/month/year (04/03/1961 is the 4th of March), and half of the
  founding passages give the whole date where a year question wants the year.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "kr", "st", "tr", "gl", "sk"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "m", "th"]
_COMPANY_KINDS = ["Works", "Systems", "Labs", "Foods", "Motors", "Textiles", "Energy",
                  "Shipping", "Media", "Robotics", "Pharma", "Studios"]
_FIRST_NAMES = ["Marta", "Anna", "Ivo", "Lena", "Tomas", "Ines", "Oskar", "Mira", "Pavel",
                "Sofia", "Emil", "Rosa", "Karl", "Nadia", "Felix", "Greta", "Hugo", "Elin",
                "Viktor", "Lucia", "Aron", "Dalia", "Jonas", "Petra", "Milan", "Zora",
                "Otto", "Vera", "Leon", "Ada"]

_STOP = {"a", "an", "the", "of", "in", "on", "by", "was", "is", "and", "for", "to", "who",
         "which", "what", "when", "where", "did", "does"}


def _word(rng: random.Random, syllables: int) -> str:
    text = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables))
    return (text + rng.choice(_CODAS)).capitalize()


def _stable_unit(*parts: str) -> float:
    """A number in [0, 1) that depends only on ``parts`` (stable across runs and hosts)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@dataclass(frozen=True)
class Person:
    name: str
    birth_date: str  # DD/MM/YYYY
    city: str
    country: str
    birthplace_known: bool = True


@dataclass(frozen=True)
class Company:
    name: str
    founder: str
    founded: str  # DD/MM/YYYY


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    about: str  # the entity the passage is about (its subject)
    kind: str  # company | news | person | cousin | city


@dataclass
class World:
    seed: int
    countries: list[str]
    city_country: dict[str, str]
    people: dict[str, Person]
    companies: dict[str, Company]
    passages: list[Passage]
    cousins: dict[str, str] = field(default_factory=dict)  # founder -> cousin
    _index: list[frozenset[str]] = field(default_factory=list, repr=False)  # passage words

    @staticmethod
    def generate(seed: int = 0, n_companies: int = 150) -> World:
        rng = random.Random(f"gepa-trace-demo-world:{seed}")
        used: set[str] = set()

        def fresh(make):
            while True:
                name = make()
                if name not in used and name.lower() not in _STOP:
                    used.add(name)
                    return name

        countries = [fresh(lambda: _word(rng, 2) + rng.choice(["ia", "land", "mark", "ora"]))
                     for _ in range(12)]
        city_country = {fresh(lambda: _word(rng, rng.choice([2, 3]))): rng.choice(countries)
                        for _ in range(45)}
        cities = list(city_country)
        surnames = [fresh(lambda: _word(rng, 2)) for _ in range(2 * n_companies)]

        def date(lo: int, hi: int) -> str:
            return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(lo, hi)}"

        def person(surname: str) -> Person:
            city = rng.choice(cities)
            return Person(f"{rng.choice(_FIRST_NAMES)} {surname}", date(1930, 1985), city,
                          city_country[city])

        people: dict[str, Person] = {}
        companies: dict[str, Company] = {}
        cousins: dict[str, str] = {}
        passages: list[Passage] = []
        for i in range(n_companies):
            founder = person(surnames[i])
            if rng.random() < 0.12:
                founder = Person(founder.name, founder.birth_date, founder.city,
                                 founder.country, birthplace_known=False)
            people[founder.name] = founder
            company = Company(fresh(lambda: f"{_word(rng, 2)} {rng.choice(_COMPANY_KINDS)}"),
                              founder.name, date(1950, 2015))
            companies[company.name] = company
            c, f, d = company.name, founder.name, company.founded
            style = rng.random()
            # Half the passages give the founding year alone, half the whole date.
            when = f"in {d[-4:]}" if rng.random() < 0.5 else f"on {d}"
            if style < 0.3:
                text = f"{c} was founded {when} by {f}."
            elif style < 0.65:
                text = f"{f} founded {c} {when}."
            else:
                text = f"{when.capitalize()}, {f} founded {c}."
            passages.append(Passage(f"c{i}", text, c, "company"))
            if rng.random() < 0.3:
                passages.append(Passage(
                    f"n{i}", f"{c} opened an office in {rng.choice(cities)} on {date(1990, 2020)}.",
                    c, "news"))
            if founder.birthplace_known:
                text = (f"{f} was born on {founder.birth_date} in {founder.city}, "
                        f"{founder.country}.")
            else:
                text = (f"{f} was born on {founder.birth_date} and grew up in {founder.city}, "
                        f"{founder.country}; the place of birth is not recorded.")
            passages.append(Passage(f"p{i}", text, f, "person"))
            if rng.random() < 0.35:
                cousin = person(surnames[n_companies + i])
                people[cousin.name] = cousin
                cousins[f] = cousin.name
                passages.append(Passage(
                    f"q{i}", f"{cousin.name}, a cousin of {f}, was born on {cousin.birth_date} "
                    f"in {cousin.city}, {cousin.country}.", cousin.name, "cousin"))
        for j, (city, country) in enumerate(city_country.items()):
            passages.append(Passage(f"t{j}", f"{city} is a city in {country}.", city, "city"))
        return World(seed, countries, city_country, people, companies, passages, cousins)

    # -- facts -------------------------------------------------------------------------
    def fact_count(self) -> int:
        """Atomic facts: founder and founding date of each company, birth date and place
        of each person, country of each city."""
        return 2 * len(self.companies) + 2 * len(self.people) + len(self.city_country)

    def founder_of(self, company: str) -> Person:
        return self.people[self.companies[company].founder]

    # -- retrieval ---------------------------------------------------------------------
    def search(self, query: str, k: int = 4) -> list[Passage]:
        """The ``k`` passages sharing the most distinct words with ``query``.

        Ties (a news passage and the founding passage both name the company) are broken
        by a hash of passage and query, so which comes first is arbitrary but fixed.
        """
        wanted = set(tokens(query)) - _STOP
        if not wanted:
            return []
        if len(self._index) != len(self.passages):
            self._index = [frozenset(tokens(p.text)) for p in self.passages]
        scored = []
        for p, words in zip(self.passages, self._index):
            overlap = len(wanted & words)
            if overlap:
                scored.append((-overlap, _stable_unit(p.id, query), p))
        scored.sort(key=lambda t: (t[0], t[1]))
        return [p for _, _, p in scored[:k]]


@lru_cache(maxsize=8)
def world(seed: int = 0) -> World:
    """The world of ``seed`` (cached: generating it takes a few milliseconds)."""
    return World.generate(seed)


def render_passages(passages: list[Passage]) -> str:
    """Passages as the retrieval tool shows them: ``[1] text`` per line."""
    if not passages:
        return "(no passages found)"
    return "\n".join(f"[{i}] {p.text}" for i, p in enumerate(passages, 1))


# -- questions ---------------------------------------------------------------------------
QUESTION_KINDS = {"country": 0.22, "city": 0.18, "month": 0.12, "founder": 0.28, "year": 0.20}

_TEMPLATES = {
    "country": "In which country was the founder of {c} born?",
    "city": "In which city was the founder of {c} born?",
    "month": "In which month was the founder of {c} born?",
    "founder": "Who founded {c}?",
    "year": "In which year was {c} founded?",
}


@dataclass(frozen=True)
class Question:
    text: str
    kind: str
    company: str
    answer: str


def answer_of(w: World, kind: str, company: str) -> str:
    """The true answer, computed from the world's facts."""
    co = w.companies[company]
    founder = w.people[co.founder]
    if kind == "founder":
        return founder.name
    if kind == "year":
        return co.founded.split("/")[2]
    if kind == "month":
        return MONTHS[int(founder.birth_date.split("/")[1]) - 1]
    if not founder.birthplace_known:
        return "unknown"
    return founder.city if kind == "city" else founder.country


def make_questions(n: int, seed: int = 0, world_seed: int = 0) -> list[Question]:
    """``n`` distinct questions (kinds drawn by QUESTION_KINDS), deterministic per seed."""
    w = world(world_seed)
    rng = random.Random(f"gepa-trace-demo-questions:{seed}")
    pool = [(kind, c) for c in w.companies for kind in QUESTION_KINDS]
    kinds, weights = zip(*QUESTION_KINDS.items())
    out: list[Question] = []
    seen: set[tuple[str, str]] = set()
    if n > len(pool):
        raise ValueError(f"n={n} is more than the {len(pool)} distinct questions of this world")
    companies = list(w.companies)
    while len(out) < n:
        kind = rng.choices(kinds, weights)[0]
        company = rng.choice(companies)
        if (kind, company) in seen:
            continue
        seen.add((kind, company))
        out.append(Question(_TEMPLATES[kind].format(c=company), kind, company,
                            answer_of(w, kind, company)))
    return out
