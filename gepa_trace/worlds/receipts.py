"""The expense desk: a second simulated world, extraction then formatting.

Users forward short receipts ("Thanks for dining at Café Lumen! Subtotal 23,40 EUR, tip
3,00, total 26,40 EUR — 04/03/2024"). The agent (``AGENT_NAME``) has two components:
``extractor`` writes the receipt's fields as "key: value" lines (vendor, date, total,
currency); ``formatter`` writes the ledger line in the house format
``2024-03-04 | Cafe Lumen | 26.40 | EUR`` (ISO date, vendor in plain letters, amount with
a decimal point, two decimals and no thousands separator, ISO currency code).

The world's answer key (``Receipt``: the true fields and ledger line of each generated
receipt, and ``truth_of`` which reads them back from a receipt's text) is used by the
oracle ``metric`` and by ``run_traffic`` to play users; the optimizer never imports it:
it sees the world only through a metric the user passes or users' recorded feedback.

Traps of the world, each fixed by one rule in one component (shares of receipts, measured
on ``receipts(3000)``; a receipt holds at most two, so most failures have one cause,
and several are rare, so finding them takes examples):

| trap            | component | share | what the seed prompt does                      |
|-----------------|-----------|-------|------------------------------------------------|
| comma_decimal   | formatter | 0.22  | keeps 26,40                                    |
| subtotal        | extractor | 0.22  | takes the subtotal, listed first, as the total |
| extra_words     | formatter | ~0.15 | writes "Ledger entry: ..." (the task model's habit, any receipt) |
| month_first     | extractor | 0.11  | reads 04/03/2024 as April 3                    |
| accents         | formatter | 0.09  | keeps "Café"                                   |
| currency_symbol | extractor | 0.08  | keeps "€" instead of EUR                       |
| two_decimals    | formatter | 0.07  | writes 26 for 26.00                            |
| processor       | extractor | 0.06  | names the payment processor ("via PayWave")    |
| thousands       | formatter | 0.05  | keeps 1.234,50                                 |

Seed prompts score about 0.28 (0.27 on ``examples(60)``, 0.29 on ``examples(300)``), the
hand-written ``BEST_PROMPTS`` 1.0.

The numbers are those of the simulated models (``gepa-sim/task``, ``gepa-sim/reflect``,
``gepa_trace.lm.sim.receipts``) and are labelled so wherever they are reported.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from gepa_trace.optimizer.protocols import Example, Score
from gepa_trace.prompts import PromptSet

AGENT_NAME = "expense-desk"
COMPONENTS = ("extractor", "formatter")

_HUMAN = {"extractor": "Receipt:\n{receipt}\n\nFields:",
          "formatter": "Fields:\n{fields}\n\nLedger line:"}
_SEED_INSTRUCTIONS = {
    "extractor": ("You read expense receipts and write down their fields. Write one line per "
                  "field, as 'key: value': vendor, date (YYYY-MM-DD), total, currency."),
    "formatter": ("You write ledger lines for an expense desk from the extracted fields. The "
                  "house format is: date | vendor | amount | currency."),
}
_BEST_RULES = {
    "extractor": [
        "The total is the amount labelled total, after tip and tax, never the subtotal.",
        "Dates on receipts are written day first (DD/MM/YYYY).",
        "Write the currency as its three-letter ISO code (EUR, GBP, USD), never a symbol.",
        "The vendor is the shop itself, never the payment processor named after 'via'.",
    ],
    "formatter": [
        "Reply with only the ledger line, nothing else.",
        "Write amounts with a decimal point: 26,40 becomes 26.40.",
        "Write amounts without a thousands separator (1234.50, not 1.234,50).",
        "Write vendor names in plain letters, without accents (Cafe, not Café).",
        "Always write two decimals: 26 becomes 26.00.",
    ],
}


def _prompt_set(instructions: dict[str, str]) -> PromptSet:
    return PromptSet({name: [{"role": "system", "content": instructions[name]},
                             {"role": "human", "content": _HUMAN[name]}]
                      for name in COMPONENTS}, agent=AGENT_NAME)


#: Plain first drafts: what each step is for and the house format, nothing of the traps.
SEED_PROMPTS = _prompt_set(_SEED_INSTRUCTIONS)
#: Hand-written: the drafts plus one rule for each trap.
BEST_PROMPTS = _prompt_set({
    name: _SEED_INSTRUCTIONS[name] + "\n\nRules:\n" + "\n".join(f"- {r}" for r in rules)
    for name, rules in _BEST_RULES.items()})

# -- the world -------------------------------------------------------------------------
_PLAIN = ["Blue Door Books", "Nordic Fuel", "Harbour Pharmacy", "Green Leaf Grocers",
          "Metro Taxis", "Oak Street Hardware", "Sunset Diner", "Copper Kettle",
          "Pine Hotel", "Riverside Parking", "Atlas Office Supply", "Golden Wok",
          "Maple Bakery", "Swift Rail", "Lighthouse Print", "Red Fern Florist"]
_ACCENTED = ["Café Lumen", "Crêperie Soleil", "Bäckerei Hofmann", "Librería Sol",
             "Brasserie Océan", "Smørrebrød Hus"]
PROCESSORS = ["PayWave", "Tillpoint", "CardFlow", "Zapay"]
_SYMBOL = {"EUR": "€", "GBP": "£", "USD": "$"}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
TRAPS = ("subtotal", "month_first", "currency_symbol", "processor", "comma_decimal",
         "thousands", "accents", "two_decimals")


def fold(text: str) -> str:
    """The house form of a name: no accents."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


@dataclass(frozen=True)
class Receipt:
    """One generated receipt and its truth."""

    text: str
    vendor: str  # as written on the receipt
    date: str  # ISO
    total: str  # canonical: 1234.50
    currency: str  # ISO code
    subtotal: str | None = None
    processor: str | None = None
    traps: tuple[str, ...] = ()

    @property
    def ledger(self) -> str:
        return f"{self.date} | {fold(self.vendor)} | {self.total} | {self.currency}"


def _written(cents: int, comma: bool, group: bool, whole: bool) -> str:
    units, rest = divmod(cents, 100)
    digits = f"{units:,}".replace(",", "." if comma else ",") if group else str(units)
    return digits if whole else f"{digits}{',' if comma else '.'}{rest:02d}"


def make_receipt(rng: random.Random) -> Receipt:
    """One receipt drawn with ``rng`` (the shares of the module table)."""
    accented = rng.random() < 0.10
    vendor = rng.choice(_ACCENTED if accented else _PLAIN)
    currency = rng.choices(["EUR", "GBP", "USD", "CHF"], [5, 2, 2, 1])[0]
    symbol = currency != "CHF" and rng.random() < 0.12
    comma = currency in ("EUR", "CHF") and rng.random() < 0.45
    big = rng.random() < 0.07
    whole = not big and rng.random() < 0.08
    with_subtotal = rng.random() < 0.25
    processor = rng.choice(PROCESSORS) if rng.random() < 0.08 else None
    unit = 100 if whole else 1
    sub = (rng.randint(100_000, 480_000) if big else rng.randint(400, 9_000)) // unit * unit
    tip = max(unit, (sub // 10) // unit * unit) if with_subtotal else 0
    total = sub + tip

    def money(cents: int, mark: bool = True) -> str:
        num = _written(cents, comma, cents >= 100_000, whole)
        if not mark:
            return num
        if symbol:
            return f"{_SYMBOL[currency]}{num}"
        return f"{num} {currency}" if rng.random() < 0.7 else f"{currency} {num}"

    day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.choice([2023, 2024, 2025])
    form = rng.choices(["numeric", "text", "iso"], [35, 40, 25])[0]
    date = {"numeric": f"{day:02d}/{month:02d}/{year}", "text": f"{day} {MONTHS[month - 1]} "
            f"{year}", "iso": f"{year}-{month:02d}-{day:02d}"}[form]
    if with_subtotal:
        amounts = f"Subtotal {money(sub)}, tip {money(tip, False)}, total {money(total)}"
    elif rng.random() < 0.3:
        amounts = f"VAT included {money(total // 6, False)}, Total {money(total)}"
    else:
        amounts = rng.choice(["Total {}", "Amount due: {}", "Total paid {}"]).format(
            money(total))
    if processor:
        text = f"Paid via {processor} to {vendor} on {date}. {amounts}."
    else:
        text = rng.choice([
            "Thanks for dining at {v}! {a} — {d}", "Receipt from {v}, {d}. {a}.",
            "Your order at {v} on {d}: {a}. Thank you!", "Payment to {v} ({d}). {a}.",
        ]).format(v=vendor, a=amounts, d=date)
    traps = [name for name, on in (
        ("subtotal", with_subtotal), ("month_first", form == "numeric" and day <= 12
                                      and day != month),
        ("currency_symbol", symbol), ("processor", bool(processor)),
        ("comma_decimal", comma and not whole), ("thousands", total >= 100_000),
        ("accents", accented), ("two_decimals", whole)) if on]
    return Receipt(text=text, vendor=vendor, date=f"{year}-{month:02d}-{day:02d}",
                   total=f"{total // 100}.{total % 100:02d}", currency=currency,
                   subtotal=f"{sub // 100}.{sub % 100:02d}" if with_subtotal else None,
                   processor=processor, traps=tuple(traps))


MAX_TRAPS = 2


def receipts(n: int, seed: int = 0) -> list[Receipt]:
    """``n`` receipts, deterministic per ``seed``. A receipt holds at most ``MAX_TRAPS``
    traps (redrawn otherwise), so that most failures have a single cause to learn from."""
    out = []
    for i in range(n):
        rng = random.Random(f"gepa-trace-receipts:{seed}:{i}")
        receipt = make_receipt(rng)
        while len(receipt.traps) > MAX_TRAPS:
            receipt = make_receipt(rng)
        out.append(receipt)
    return out


def examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` receipts as Examples: inputs ``{"receipt": text}``, ``expected`` the true
    ledger line (the traps each holds stay in ``receipts(n, seed)``, same order)."""
    return [Example(id=f"receipt-{seed}-{i}", inputs={"receipt": r.text}, expected=r.ledger)
            for i, r in enumerate(receipts(n, seed))]


# -- the answer key, read back from a receipt's text ------------------------------------
_NUM = r"\d(?:[\d.,]*\d)?"
_CODES = "EUR|GBP|USD|CHF"


def _value(written: str) -> str:
    m = re.fullmatch(r"([\d.,]*?)(?:[.,](\d{2}))?", written)
    whole = re.sub(r"\D", "", m.group(1) if m else written)
    return f"{int(whole or 0)}.{(m.group(2) if m and m.group(2) else '00')}"


def truth_of(text: str) -> Receipt | None:
    """The truth of a receipt of this world from its text, or None if it is not one."""
    vendor = re.search(r"\b(?:at|from|to) (.+?)(?:!|,| on | \(|\.\s)", text)
    total = re.search(rf"(?:(?<![Ss]ub)total|Total|Amount due:|Total paid) ([€£$]?)({_NUM})"
                      rf"(?: ({_CODES}))?|(?:(?<![Ss]ub)total|Total|Amount due:|Total paid) ({_CODES}) "
                      rf"({_NUM})", text)
    if not vendor or not total:
        return None
    currency = total.group(3) or total.group(4) or {v: k for k, v in _SYMBOL.items()}.get(
        total.group(1) or "", "")
    written = total.group(2) or total.group(5)
    date = None
    if m := re.search(r"\b(\d{4})-(\d{2})-(\d{2})\b", text):
        date = m.group(0)
    elif m := re.search(r"\b(\d{2})/(\d{2})/(\d{4})\b", text):
        date = f"{m.group(3)}-{m.group(2)}-{m.group(1)}"
    elif m := re.search(rf"\b(\d{{1,2}}) ({'|'.join(MONTHS)}) (\d{{4}})\b", text):
        date = f"{m.group(3)}-{MONTHS.index(m.group(2)) + 1:02d}-{int(m.group(1)):02d}"
    sub = re.search(rf"Subtotal [€£$]?({_NUM})", text)
    processor = re.search(r"\bvia (\w+)", text)
    if not date or not currency:
        return None
    return Receipt(text=text, vendor=vendor.group(1), date=date, total=_value(written),
                   currency=currency, subtotal=_value(sub.group(1)) if sub else None,
                   processor=processor.group(1) if processor else None)


# -- the oracle -------------------------------------------------------------------------
_LINE = re.compile(r"(\d{4}-\d{2}-\d{2}) \| (.+?) \| (.+?) \| (\S+)\s*$")


def _ledger_of(output: Any) -> str:
    if isinstance(output, dict):
        output = output.get("answer")
    return str(output or "").strip()


def metric(example: Example, output: Any, trace: Any = None) -> Score:
    """The ORACLE: 1.0 when the ledger line is exactly the true one, else 0.0 with a
    sentence naming the first thing wrong ("expected total 26.40, got 23.40 (the
    subtotal)") and the right line. For benchmarks and tests; ``gepa-trace optimize
    --metric gepa_trace.worlds.receipts:metric`` uses it as a user's metric."""
    truth = truth_of(str((example.inputs or {}).get("receipt", "")))
    want = truth.ledger if truth else (str(example.expected) if example.expected else None)
    if want is None:
        return Score(0.0, "no expected ledger line is known for this receipt")
    got = _ledger_of(output)
    if got == want:
        return Score(1.0, "correct")
    return Score(0.0, f"{_first_wrong(truth, want, got)}; the right ledger line is '{want}'")


def _first_wrong(truth: Receipt | None, want: str, got: str) -> str:
    m = _LINE.search(got)
    if truth is None or m is None:
        return f"expected '{want}', got '{got[:200]}'"
    date, vendor, amount, currency = m.groups()
    prefix = got[:m.start()].strip()
    if fold(vendor).lower() != fold(truth.vendor).lower():
        why = " (the payment processor, not the shop)" if vendor == truth.processor else ""
        return f"expected vendor {fold(truth.vendor)}, got {vendor}{why}"
    if date != truth.date:
        swapped = re.sub(r"(\d{4})-(\d\d)-(\d\d)", r"\1-\3-\2", date) == truth.date
        why = " (day and month swapped: the receipt writes the day first)" if swapped else ""
        return f"expected date {truth.date}, got {date}{why}"
    if _value(amount) != truth.total:
        why = " (the subtotal)" if _value(amount) == truth.subtotal else ""
        return f"expected total {truth.total}, got {amount}{why}"
    if currency != truth.currency:
        why = " (the symbol, not the ISO code)" if currency in "€£$" else ""
        return f"expected currency {truth.currency}, got {currency}{why}"
    if prefix:
        return f"the line has extra words ('{prefix[:40]}'); expected only the ledger line"
    if amount != truth.total:
        why = (" (a thousands separator)" if re.search(r"\d[.,]\d{3}", amount) else
               " (a decimal comma; the ledger uses a decimal point)" if "," in amount else
               " (the ledger writes two decimals)" if amount.isdigit() else "")
        return f"expected amount {truth.total}, got {amount}{why}"
    if vendor != fold(truth.vendor):
        return f"expected vendor {fold(truth.vendor)}, got {vendor} (the ledger has no accents)"
    return f"expected '{want}', got '{got[:200]}'"


# -- the agent -------------------------------------------------------------------------
def build_agent(prompts: PromptSet, model: Any = "gepa-sim/task"):
    """The expense desk for ``prompts``: ``{"receipt": text}`` in, ``{"answer": ledger
    line, "fields": the extractor's lines}`` out. ``model``: a litellm model string
    (default the simulated task model) or a langchain chat model."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.runnables import RunnableLambda

    import gepa_trace as gt
    from gepa_trace.errors import ConfigError
    from gepa_trace.lm.chat_model import LiteLLMChatModel

    missing = [c for c in COMPONENTS if c not in prompts]
    if missing:
        raise ConfigError(f"the prompt set has no component {', '.join(missing)} "
                          f"(the expense desk needs {', '.join(COMPONENTS)})")
    llm = LiteLLMChatModel(model=model) if isinstance(model, str) else model
    extractor = gt.component("extractor", prompts["extractor"]) | llm | StrOutputParser()
    formatter = gt.component("formatter", prompts["formatter"]) | llm | StrOutputParser()

    def run(inputs: dict) -> dict:
        fields = extractor.invoke({"receipt": inputs["receipt"]}).strip()
        return {"answer": formatter.invoke({"fields": fields}).strip(), "fields": fields}

    return RunnableLambda(run, name=AGENT_NAME)


def run_traffic(n: int, *, store: Any = None, seed: int = 0, feedback_rate: float = 0.5,
                model: Any = "gepa-sim/task", threads: int = 8, **options: Any) -> list[str]:
    """Production runs of the seed prompts on ``n`` receipts with users' feedback
    (``gepa_trace.worlds.receipt_traffic.record_traffic``, which documents the options)."""
    from gepa_trace.worlds.receipt_traffic import record_traffic

    return record_traffic(n, store=store, seed=seed, feedback_rate=feedback_rate, model=model,
                          threads=threads, **options)


__all__ = ["AGENT_NAME", "BEST_PROMPTS", "COMPONENTS", "SEED_PROMPTS", "Receipt", "build_agent",
           "examples", "metric", "receipts", "run_traffic", "truth_of"]
