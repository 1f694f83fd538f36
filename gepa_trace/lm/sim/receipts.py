"""``gepa-sim/task`` and ``gepa-sim/reflect`` for receipt extraction and ledger formatting.

SIMULATED, like the rest of ``gepa_trace.lm.sim``: small deterministic readers of the
prompt. They serve agents whose first instruction sentence asks to read receipts or
expenses and write their fields (step ``extract``), or to write ledger lines (step
``format``); ``task.reply`` and ``reflect`` hand such prompts here (``step_of``). Nothing
here knows any world's receipts: facts come from the prompt only.

The task model, step ``extract``: reads the ``Receipt:`` text and writes ``vendor``,
``date`` (ISO), ``total`` (the amount as written) and ``currency`` as "key: value" lines.
Step ``format``: reads those lines under ``Fields:`` and writes one line in the order the
instruction names ("date | vendor | amount | currency"; else the fields' order).
Behaviours an instruction switches on (``BEHAVIOURS``; "!" phrasings only in sentences
without a negation):

| behaviour     | step    | without it (failure mode)                                        |
|---------------|---------|------------------------------------------------------------------|
| real_total    | extract | the first amount whose label says "total" is taken: the subtotal |
| day_first     | extract | 04/03/2024 is read month first when the first number is <= 12  |
| iso_currency  | extract | the currency is copied as written: a symbol (€) stays a symbol  |
| shop_vendor   | extract | the first name after at/from/via/by is the vendor: a payment processor if it comes first |
| point_decimal | format  | the amount is copied as written: 26,40 keeps its decimal comma   |
| bare_line     | format  | 15% of the lines start with "Ledger entry: "                     |
| no_grouping   | format  | 1.234,50 keeps its thousands separator                           |
| plain_vendor  | format  | accented names (Café) are copied with their accents              |
| two_decimals  | format  | a whole amount (26) is written without decimals                  |
| first_amount, symbol_currency, comma_decimal, entry_prefix: harmful rules (the first amount of any label; codes turned into symbols; a decimal comma; the prefix always) |

The reflection (``reflect``) reads the reflection prompt as ``reflect._reflect`` does,
in our layout (component inputs and output, score, feedback) or gepa's ("Inputs",
"Generated Outputs", "Feedback"), and recognises ``PATTERNS`` two ways: from the
feedback's words ("(the subtotal)", "decimal comma", ...), and by comparing the output
with the expected ledger line the feedback quotes (a user's correction, the metric's
"right ledger line") and the inputs (the subtotal the receipt shows, the processor
named after "via"); only failed examples (score below 1) are read for the comparison.
It keeps the rules, adds one for the most frequent failure its step can fix (removing
a harmful rule that causes it), and has the demo reflection's flaws (useless 0.12,
harmful 0.07, drop 0.07; with no failure its step can fix, a vague rule 70% of the
time, else a harmful one). The rng is seeded from the prompt: same prompt, same reply.
"""

from __future__ import annotations

import random
import re
import unicodedata
from typing import NamedTuple

from gepa_trace.lm.sim.diagnose import records_of
from gepa_trace.lm.sim.quoted import unquote
from gepa_trace.lm.sim.task import sentences

USELESS_RATE = 0.12
HARMFUL_RATE = 0.07
DROP_RATE = 0.07
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december"]
SYMBOLS = {"€": "EUR", "£": "GBP", "$": "USD"}

_NEG = re.compile(r"\b(not|never|no|avoid|don't|do not|without|instead of|rather than)\b")
BEHAVIOURS: dict[str, tuple[str, list[str]]] = {
    "real_total": ("extract", [
        r"total.{0,60}\b(not|never|rather than|instead of)\b.{0,20}subtotal",
        r"(skip|ignore).{0,30}subtotal", r"subtotal is (not|never) the total",
        r"amount (labelled|labeled|marked) .?total.? (itself|alone)"]),
    "day_first": ("extract", [
        r"day[ -]first|day/month|dd/mm|(first|leading) number is the day",
        r"(day|dd) (comes|is written|goes) (first|before the month)"]),
    "iso_currency": ("extract", [
        r"\biso\b", r"three[- ]letter", (r"(code|eur).{0,40}\b(not|never|rather than|instead of)"
        r"\b.{0,20}symbol"), r"symbols?.{0,40}\b(to|into|with|as) (its|the|an?) .{0,20}code"]),
    "shop_vendor": ("extract", [
        r"(payment )?processors?|payment (service|provider|app)",
        r"vendor is the (shop|store|business|merchant)"]),
    "first_amount": ("extract", [r"!first amount.{0,40}\b(is|as) the total"]),
    "symbol_currency": ("extract", [r"!currency.{0,30}\bas (its|a|the) symbol"]),
    "point_decimal": ("format", [
        r"decimal point", r"comma.{0,40}\b(to|into|with|by) a (decimal )?(point|dot)",
        r"(point|dot).{0,30}\b(not|never|rather than|instead of)\b.{0,10}(a )?(decimal )?comma"]),
    "bare_line": ("format", [
        r"nothing (else|but the line)|only the (ledger )?line|no (extra|other) (words|text)",
        r"(no|without|never|don't|do not).{0,30}(prefix|label|extra words|introduction)"]),
    "no_grouping": ("format", [r"thousands?[- ]separators?|digit grouping|group(ing)? digits"]),
    "plain_vendor": ("format", [r"accents?|\bascii\b|diacritics?|plain letters"]),
    "two_decimals": ("format", [r"(two|2) decimals|two decimal places|\.00\b"]),
    "comma_decimal": ("format", [r"!(write|use|give).{0,30}decimal comma"]),
    "entry_prefix": ("format", [r"!(begin|start|prefix).{0,30}ledger entry"]),
}
_COMPILED = {n: [(p.startswith("!"), re.compile(p.lstrip("!"))) for p in pats]
             for n, (_s, pats) in BEHAVIOURS.items()}
_EXTRACT_STEP = re.compile(r"\b(receipts?|expenses?)\b.{0,80}\b(fields?|extract|details)\b|"
                           r"\b(extract|read)\b.{0,60}\b(receipts?|expenses?)\b")
_FORMAT_STEP = re.compile(r"\bledger (lines?|entry|entries)\b")


def step_of(instruction: str) -> str | None:
    """``extract`` | ``format`` when the instruction's first sentence asks for one, else
    None (the prompt is not for this family of agents)."""
    first = " ".join(sentences(instruction)[:1])
    if _FORMAT_STEP.search(first):
        return "format"
    if _EXTRACT_STEP.search(first):
        return "extract"
    return None


def behaviours_of(instruction: str) -> frozenset[str]:
    """The behaviours an instruction switches on (see the module table)."""
    found = set()
    for sentence in sentences(instruction):
        negated = bool(_NEG.search(sentence))
        for name, patterns in _COMPILED.items():
            if any(p.search(sentence) for positive, p in patterns if not (positive and negated)):
                found.add(name)
    return frozenset(found)


# -- reading receipts and amounts (also used by the reflection) --------------------------
_NAME = r"[A-ZÀ-Þ][\wÀ-ÿ'&-]*(?: (?:&|de|la|del|of|[A-ZÀ-Þ][\wÀ-ÿ'&-]*))*"
_CUED = re.compile(rf"\b(at|from|to|via|by|with|through)\s+({_NAME})")
_PROCESSOR_CUES = {"via", "by", "with", "through"}
_CUR = r"[€£$]|[A-Z]{3}\b"
_NUM = r"\d{1,3}(?:[.,' ]\d{3})+(?:[.,]\d{2})?|\d+(?:[.,]\d{2})?"
_AMOUNT = re.compile(rf"(?P<label>[A-Za-z][A-Za-z -]{{1,20}}?)\s*:?\s*(?P<pre>{_CUR})?\s?"
                     rf"(?P<num>{_NUM})(?!\d|/|-)\s?(?P<post>{_CUR})?")
_NUMERIC_DATE = re.compile(r"\b(\d{1,2})[/.](\d{1,2})[/.](\d{4})\b")
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_TEXT_DATE = re.compile(r"\b(\d{1,2}) (" + "|".join(MONTHS) + r") (\d{4})\b", re.IGNORECASE)


def amount_value(text: str) -> float | None:
    """The number an amount means, whatever its separators ("1.234,50" -> 1234.5)."""
    s = re.sub(r"[^\d.,' ]", "", str(text)).strip()
    m = re.fullmatch(r"(\d[\d.,' ]*?)(?:[.,](\d{2}))?", s)
    if not m:
        return None
    whole = re.sub(r"\D", "", m.group(1))
    return float(f"{whole or 0}.{m.group(2) or '00'}")


def fold(text: str) -> str:
    """``text`` without accents."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _amounts(text: str) -> list[tuple[str, str, str]]:
    """(label, number, currency as written) of each labelled amount, in order."""
    out = []
    for m in _AMOUNT.finditer(text):
        label = m.group("label").strip().lower().split()[-1]
        out.append((label, m.group("num").strip(), m.group("pre") or m.group("post") or ""))
    return out


def extract(rules: frozenset[str], receipt: str) -> str:
    amounts = _amounts(receipt)
    if "first_amount" in rules:
        chosen = amounts[:1]
    else:
        totals = [a for a in amounts if "total" in a[0] or a[0] in ("due", "paid")]
        if "real_total" in rules:
            totals = [a for a in totals if "sub" not in a[0]] or totals
        chosen = totals[:1] or amounts[:1]
    _label, number, currency = chosen[0] if chosen else ("", "", "")
    if not currency:
        currency = next((c for _l, _n, c in amounts if c), "")
    if "symbol_currency" in rules:
        currency = {v: k for k, v in SYMBOLS.items()}.get(currency, currency)
    elif "iso_currency" in rules:
        currency = SYMBOLS.get(currency, currency)
    names = [(cue.lower(), name.rstrip(".")) for cue, name in _CUED.findall(receipt)]
    if "shop_vendor" in rules:
        names = [n for n in names if n[0] not in _PROCESSOR_CUES] or names
    vendor = names[0][1] if names else ""
    return (f"vendor: {vendor}\ndate: {_read_date(rules, receipt)}\ntotal: {number}\n"
            f"currency: {currency}")


def _read_date(rules: frozenset[str], receipt: str) -> str:
    if m := _ISO_DATE.search(receipt):
        return m.group(0)
    if m := _TEXT_DATE.search(receipt):
        return f"{m.group(3)}-{MONTHS.index(m.group(2).lower()) + 1:02d}-{int(m.group(1)):02d}"
    if m := _NUMERIC_DATE.search(receipt):
        a, b, year = int(m.group(1)), int(m.group(2)), m.group(3)
        # A US-trained reader puts the month first unless told, or unless it cannot be.
        day, month = (a, b) if "day_first" in rules or a > 12 else (b, a)
        return f"{year}-{month:02d}-{day:02d}"
    return ""


def format_amount(rules: frozenset[str], number: str) -> str:
    s = number.strip()
    if "no_grouping" in rules:
        s = re.sub(r"(?<=\d)[.,' ](?=\d{3}(?:\D|$))", "", s)
    if "point_decimal" in rules:
        s = re.sub(r",(\d{2})$", r".\1", s)
    if "comma_decimal" in rules:
        s = re.sub(r"\.(\d{2})$", r",\1", s)
    if "two_decimals" in rules and re.fullmatch(r"\d+", s):
        s += ".00"
    return s


_ORDER = re.compile(r"\b(date|vendor|amount|total|currency)((?: ?\| ?(?:date|vendor|amount|"
                    r"total|currency)){3})")


def format_line(instruction: str, rules: frozenset[str], fields_text: str) -> str:
    fields = {k.strip().lower(): v.strip() for k, v in
              re.findall(r"(?m)^\s*(vendor|date|total|amount|currency)\s*:[ \t]*(.*)$",
                         fields_text, re.IGNORECASE)}
    fields.setdefault("amount", fields.get("total", ""))
    # The prefix habit hangs on the vendor and date as given, so that fixing the total or
    # the currency upstream does not re-roll it.
    habit = _unit(fields.get("vendor", "") + "|" + fields.get("date", "")) < 0.15
    if "plain_vendor" in rules:
        fields["vendor"] = fold(fields.get("vendor", ""))
    fields["amount"] = format_amount(rules, fields["amount"])
    m = _ORDER.search(instruction.lower())
    order = re.findall(r"\w+", m.group(0)) if m else ["vendor", "date", "amount", "currency"]
    line = " | ".join(fields.get("amount" if k == "total" else k, "") for k in order)
    if "entry_prefix" in rules or ("bare_line" not in rules and habit):
        return "Ledger entry: " + line
    return line


def _unit(text: str) -> float:
    return random.Random("ledger|" + text).random()


def _field(user: str, label: str, cues: str) -> str:
    m = re.search(rf"(?ims)^\s*(?:{label})\s*:\s*(.*?)(?:^\s*(?:{cues})\s*:\s*$|\Z)", user)
    return m.group(1).strip() if m else user


def task_reply(instruction: str, user: str) -> str:
    """The task model's reply for an instruction of this family (``step_of`` not None)."""
    rules = behaviours_of(instruction)
    if step_of(instruction) == "extract":
        return extract(rules, _field(user, "receipt|message|email", "fields"))
    return format_line(instruction, rules, _field(user, "fields", "ledger line"))


# -- the reflection --------------------------------------------------------------------
class Pattern(NamedTuple):
    """A failure the reflection recognises, and its fix."""

    step: str  # the step whose instruction can fix it
    words: str  # feedback words that name it
    behaviour: str  # the task model's behaviour the fix switches on
    diagnosis: str
    rules: tuple[str, ...]  # phrasings of the fix
    removes: tuple[str, ...]  # behaviours whose lines the fix deletes (they cause it)


PATTERNS: dict[str, Pattern] = {
    "subtotal": Pattern("extract", r"\(the subtotal\)|subtotal instead|not the subtotal",
                 "real_total", "the total written is the receipt's subtotal, before tip and tax",
                 (("The total is the amount labelled total, after tip and tax, never the "
                  "subtotal."), "Ignore the subtotal: take the final total the customer paid.",
                  "Use the grand total, not the subtotal, as the total."), ("first_amount",)),
    "month_first": Pattern("extract", r"day and month (are )?swapped|month first|written day first",
                    "day_first", ("numeric dates were read month first, but receipts write "
                    "the day first"),
                    ("Dates on receipts are written day first (DD/MM/YYYY).",
                     "In numeric dates the first number is the day and the second the month.",
                     "Read 04/03/2024 as 4 March: receipts write day/month/year."), ()),
    "currency_symbol": Pattern("extract", r"currency symbol|\(the symbol|iso code", "iso_currency",
                        "the currency was copied as a symbol where its ISO code is wanted",
                        (("Write the currency as its three-letter ISO code (EUR, GBP, USD), "
                         "never a symbol."), ("Turn a currency symbol into the ISO code: € is "
                         "EUR, £ is GBP, $ is USD."), ("Give the currency code (EUR), not the "
                         "symbol (€).")), ("symbol_currency",)),
    "processor": Pattern("extract", r"payment processor|not the shop", "shop_vendor",
                  "the vendor written is the payment processor, not the shop",
                  (("The vendor is the shop itself, never the payment processor named after "
                   "'via' or 'by'."), ("Skip payment processors (names after via, by or with); "
                   "the vendor is the shop."), ("Take the vendor from the shop's name, not from "
                   "the payment service.")), ()),
    "extra_words": Pattern("format", r"extra words|only the (ledger )?line|too long", "bare_line",
                    "the line starts with words that are not part of the ledger format",
                    ("Reply with only the ledger line, nothing else.", ("Do not add a prefix "
                     "such as 'Ledger entry:'; write the line alone."),
                     "Write no extra words around the line."), ("entry_prefix",)),
    "comma_decimal": Pattern("format", r"decimal comma", "point_decimal",
                      "amounts keep the receipt's decimal comma; the ledger uses a point",
                      ("Write amounts with a decimal point: 26,40 becomes 26.40.",
                       "Replace a decimal comma with a decimal point.",
                       "Amounts use a point, never a comma, before the cents."),
                      ("comma_decimal",)),
    "thousands": Pattern("format", r"thousands separator", "no_grouping",
                  "large amounts keep a thousands separator",
                  ("Write amounts without a thousands separator (1234.50, not 1.234,50).",
                   "Remove digit grouping from amounts: no thousands separator."), ()),
    "accents": Pattern("format", r"accent", "plain_vendor",
                "vendor names keep their accents; the ledger writes plain letters",
                ("Write vendor names in plain letters, without accents (Cafe, not Café).",
                 "Strip accents from the vendor name."), ()),
    "two_decimals": Pattern("format", r"two decimals", "two_decimals",
                     "whole amounts are written without their two decimals",
                     ("Always write two decimals: 26 becomes 26.00.",
                      "Write every amount with two decimal places."), ()),
}
USELESS_RULES = ["Be careful with the numbers.", "Read the whole receipt before you answer.",
                 "Double-check every field."]
HARMFUL_RULES = {
    "extract": ["Currency should be written as its symbol (€, £, $), as on the receipt.",
                "The first amount on the receipt is the total."],
    "format": ["Write amounts with a decimal comma, European style.",
               "Begin the line with 'Ledger entry:' so it stands out."],
}
_LINE = (r"(\d{4}-\d{2}-\d{2}) ?\| ?([^|\n']+?) ?\| ?([^|\n']+?) ?\| ?"
         r"([A-Z]{3}\b|[€£$])")
_EXPECTED_LINE = re.compile(r"(?:expected|should be|ledger line is|correct answer)\W{0,4}"
                            + _LINE, re.IGNORECASE)
_SCORE = re.compile(r"(?im)^#{1,6}\s*score\s*\n\s*([-+]?\d+(?:\.\d+)?)")


def _line_fields(m: re.Match, text: str) -> dict[str, str]:
    # Words before the line on its own line; a dict's "{'answer': '" is not one of them.
    before = text[text.rfind("\n", 0, m.start()) + 1:m.start()]
    before = re.sub(r"^\W*(?:answer|output|ledger_line)\W*$", "", before).strip(" '\"{[")
    return {"date": m.group(1), "vendor": m.group(2).strip(), "amount": m.group(3).strip(),
            "currency": m.group(4), "prefix": before}


def fields_in(text: str) -> dict[str, str]:
    """The fields an output gives: "key: value" lines, else a ledger line's parts."""
    kv = {k.lower(): v.strip() for k, v in re.findall(
        r"(?mi)^\s*(vendor|date|total|amount|currency)\s*:[ \t]*(.*)$", text)}
    if kv:
        kv.setdefault("amount", kv.pop("total", ""))
        return kv
    m = re.search(_LINE, text)
    return _line_fields(m, text) if m else {}


def _same_amount(a: str, b: str) -> bool:
    return amount_value(a) is not None and amount_value(a) == amount_value(b)


def diagnose(example: str, feedback: str, step: str) -> list[tuple[str, str]]:
    """(pattern, what was seen) for each failure of ``step`` the example's trace shows,
    comparing its output with the expected ledger line the feedback quotes."""
    records = records_of(example)
    if not records:
        return []
    inputs, output = records[-1]
    m = _EXPECTED_LINE.search(feedback)
    want = _line_fields(m, "") if m else {}
    got = fields_in(output)
    score = _SCORE.search(example)
    keys = ("date", "vendor", "amount", "currency", "prefix")
    failed = (float(score.group(1)) < 1 if score else
              bool(want) and any(got.get(k, "") != want[k] for k in keys))
    if not got or not failed:
        return []
    found: list[tuple[str, str]] = []
    amount, vendor, cur = got.get("amount", ""), got.get("vendor", ""), got.get("currency", "")
    wrong = {k for k in ("date", "vendor", "amount", "currency")
             if want and fold(got.get(k, "")).lower() != fold(want[k]).lower()}
    if step == "extract":
        if (not want or not _same_amount(amount, want["amount"])) and any(
                _same_amount(amount, n) for label, n, _c in _amounts(inputs) if "sub" in label):
            found.append(("subtotal", f"the total {amount} is the subtotal on the receipt"))
        if "date" in wrong and re.sub(r"(\d{4})-(\d\d)-(\d\d)", r"\1-\3-\2",
                                      got.get("date", "")) == want["date"]:
            found.append(("month_first", (f"the date {got['date']} has day and month swapped "
                          f"(expected {want['date']})")))
        if cur in SYMBOLS and (not want or "currency" in wrong):
            found.append(("currency_symbol", f"the currency is the symbol {cur}, not a code"))
        if vendor and (not want or "vendor" in wrong) and re.search(
                rf"\b(via|by|with|through)\s+{re.escape(vendor)}", inputs):
            found.append(("processor", f"the vendor {vendor} is named after a payment cue"))
        return found
    if got.get("prefix"):
        found.append(("extra_words", f"the line starts with '{got['prefix'][:40]}'"))
    amount_wrong = not want or (amount != want["amount"] and _same_amount(amount, want["amount"]))
    if amount_wrong and re.search(r"\d[.,' ]\d{3}", amount):
        found.append(("thousands", f"the amount {amount} has a thousands separator"))
    elif amount_wrong and re.search(r",\d{2}$", amount):
        found.append(("comma_decimal", f"the amount {amount} has a decimal comma"))
    if amount_wrong and re.fullmatch(r"\d+", amount):
        found.append(("two_decimals", f"the amount {amount} has no decimals"))
    if vendor != fold(vendor) and (not want or fold(vendor) == want["vendor"]):
        found.append(("accents", f"the vendor {vendor} keeps its accents"))
    return found


def _remove(instruction: str, behaviours: set[str]) -> tuple[str, list[str]]:
    """The instruction without its lines that switch on ``behaviours``."""
    kept, removed = [], []
    for line in instruction.splitlines():
        (removed if behaviours & behaviours_of(line) else kept).append(line)
    return "\n".join(kept), [r.strip(" -*") for r in removed]


def reflect(messages: list[dict[str, str]], rng: random.Random) -> str:
    """A diagnosis, then the complete new instruction in one fenced block."""
    from gepa_trace.lm.sim.reflect import (
        _drop_rule,
        _sentence_around,
        current_instruction,
        examples_of,
        feedback_of,
        insert_rules,
        keep_reply,
        kept,
    )

    prompt = unquote("\n\n".join(m.get("content") or "" for m in messages
                                  if m.get("role") != "assistant"))
    instruction, after = current_instruction(prompt)
    step = step_of(instruction) or "extract"
    handled = behaviours_of(instruction)
    examples = examples_of(prompt[after:])
    counts: dict[str, int] = {}
    quotes: dict[str, str] = {}
    for example in examples:
        fb = feedback_of(example)
        seen = {}
        for name, pattern in PATTERNS.items():
            if m := re.search(pattern.words, fb, re.IGNORECASE):
                seen[name] = _sentence_around(fb, m.start())
        for name, what in diagnose(example, fb, step):
            seen.setdefault(name, what)
        for name, what in seen.items():
            counts[name] = counts.get(name, 0) + 1
            quotes.setdefault(name, what)
    applicable = [n for n in sorted(counts, key=lambda n: -counts[n])
                  if PATTERNS[n].step == step and (PATTERNS[n].behaviour not in handled
                                                   or handled & set(PATTERNS[n].removes))]
    roll = rng.random()
    total = max(len(examples), 1)
    text, new_rules, diagnosis = instruction, [], []
    if not applicable:
        keep, roll = kept(roll, prompt)
        if keep:
            return keep_reply(f"The failures in these {total} examples do not come from "
                              "this step.", instruction)
    if applicable and roll >= USELESS_RATE + HARMFUL_RATE:
        name = applicable[0]
        pattern = PATTERNS[name]
        diagnosis.append(f"In {counts[name]} of {total} examples {pattern.diagnosis} (seen: "
                         f"\"{quotes[name]}\").")
        text, removed = _remove(text, set(pattern.removes))
        if removed:
            diagnosis.append(f"The rule \"{removed[0]}\" causes this, so I removed it.")
        if pattern.behaviour not in behaviours_of(text):
            new_rules.append(rng.choice(pattern.rules))
        if roll >= 1 - DROP_RATE:
            text, dropped = _drop_rule(text, rng, keep=[])
            if dropped:
                diagnosis.append(f"The rule \"{dropped}\" looks unnecessary, so I removed it.")
        diagnosis.append("I keep the other rules and add: " + " ".join(new_rules))
    elif roll < USELESS_RATE if applicable else roll < 0.7:
        new_rules.append(rng.choice(USELESS_RULES))
        diagnosis.append(f"The cause of the failures in these {total} examples is not clear "
                         f"to me. I ask for more care: {new_rules[0]}")
    else:
        new_rules.append(rng.choice(HARMFUL_RULES[step]))
        diagnosis.append(f"Some of these {total} outputs were judged wrong. I add a rule "
                         f"that should help: {new_rules[0]}")
    return ("Diagnosis: " + " ".join(diagnosis) + "\n\nNew instruction:\n```\n"
            + insert_rules(text, new_rules).strip() + "\n```\n")
