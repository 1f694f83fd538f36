"""What the review looks for in one new prompt line, and what the user allows.

``line_findings(line, seed_text)`` returns the fragments of ``line`` that a person must
look at before the prompt ships: URLs, e-mail addresses, phone numbers, code, markup,
and instructions about revealing or ignoring prompts. A fragment the seed prompt
already holds is not new and not returned. The patterns are deliberately narrow: a
prompt rule written in plain words ("Ignore passages about a cousin", "Output only the
year") must not be flagged, or people learn to approve without reading.

``Allow`` holds the user's allow-lists (own domains, e-mail domains, phone numbers,
literal phrases); an allowed fragment is never flagged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gepa_trace.config import setting
from gepa_trace.errors import ConfigError

#: Environment variable with allow-list values, comma-separated (see ``Allow.parse``;
#: the setting ``review_allow`` of ``gepa_trace.config``).
ALLOW_ENV = "GEPA_TRACE_REVIEW_ALLOW"
#: Optional allow-list file read from the working directory (keys: domains, emails,
#: phones, phrases; each a list of strings).
ALLOW_FILE = "gepa-trace-review.yaml"

# Top-level domains a bare host name ("visit evil.example") is recognised by; with a
# scheme or "www." any host is a URL. Kept short: "e.g." or "3.5" must not be hosts.
_TLDS = ("com|net|org|io|co|ai|dev|app|info|biz|xyz|me|ly|gg|tv|cc|ru|cn|de|uk|fr|nl|"
         "eu|us|ca|au|in|jp|br|example|test|invalid|local|online|site|top|click|link|shop")
_URL = re.compile(
    r"(?i)\b(?:(?:https?|ftp)://[^\s<>\"'`)\]]+"
    r"|www\.[a-z0-9-]+(?:\.[a-z0-9-]+)+[^\s<>\"'`)\]]*"
    rf"|(?<![@\w.-])[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)*\.(?:{_TLDS})\b"
    r"(?:/[^\s<>\"'`)\]]*)?)")
_EMAIL = re.compile(r"(?i)\b[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+\b")
_PHONE = re.compile(r"(?<![\w/.])\+?\(?\d[\d\s().-]{5,}\d(?![\w/])")
_DATE_OR_RANGE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{4}\s*[-–]\s*\d{4}$"
                            r"|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")

_CODE = [re.compile(p) for p in (
    r"^\s*(?:```|~~~)",  # a fence
    r"(?i)<\s*script\b",
    r"^\s*(?:\$|#)\s+\w+",  # a shell prompt
    r"(?i)^\s*(?:sudo|curl|wget|bash|sh|zsh|chmod|chown|rm|nc|ssh|scp|powershell|cmd)\s+-?\w",
    r"(?i)\b(?:curl|wget)\s+(?:-\w+\s+)*(?:https?://|\S+\.\w{2,}/)",
    r"\brm\s+-rf?\b|\|\s*(?:sh|bash)\b|\$\([^)]*\)|`[^`]*\b(?:curl|wget|rm|bash|python)\b[^`]*`",
    r"^\s*(?:import\s+[\w.]+(?:\s+as\s+\w+)?\s*$|from\s+[\w.]+\s+import\s+[\w*]+)",
    r"^\s*(?:def|class)\s+\w+\s*[(:]",
    r"\b(?:os\.system|subprocess\.\w+|eval|exec|__import__)\s*\(",
    r"^\s*(?:python3?|node|perl|ruby)\s+(?:-c\s+|\S+\.(?:py|js|pl|rb)\b)",
)]
_MARKUP = [re.compile(p) for p in (
    r"</?[a-zA-Z][a-zA-Z0-9-]*(?:\s+[a-zA-Z-]+(?:=(?:\"[^\"]*\"|'[^']*'|[^\s>]+))?)*\s*/?>",
    r"!?\[[^\]\n]+\]\([^)\s]+\)",  # markdown link or image
)]
_REVEAL = re.compile(
    r"(?i)\b(?:reveal|print|repeat|show|output|display|share|disclose|leak|tell|recite|dump|"
    r"expose|copy|paste|echo|state|include)\b[^.\n]{0,40}?\b(?:system\s+(?:prompt|message)s?|"
    r"(?:your|hidden|initial|original|secret|internal|full|entire|complete|developer)\s+"
    r"(?:prompts?|instructions|system\s+prompt|rules|guidelines|configuration))\b"
    r"|(?i:\bwhat\s+(?:is|are|were)\s+your\s+(?:system\s+prompt|instructions|rules)\b)")
_IGNORE = re.compile(
    r"(?i)\b(?:ignore|disregard|forget|override|bypass)\b[^.\n]{0,30}?"
    r"\b(?:previous|prior|above|earlier|preceding|your|system|original|initial|developer)\b"
    r"[^.\n]{0,20}?\b(?:instructions?|prompts?|rules?|directions?|guidelines?|"
    r"context|messages?|constraints?)\b"
    r"|(?i:\b(?:ignore|disregard|forget)\s+(?:everything|all|anything)?\s*(?:above|before)\b)"
    r"|(?i:\bdisregard\s+the\s+above\b)"
    r"|(?i:\b(?:ignore|disregard|forget)\s+(?:all\s+|the\s+|any\s+)?(?:instructions|rules|"
    r"prompts?|directions)\s+(?:above|before|so\s+far)\b)")


# "Never reveal your system prompt" is a defence, not an attack.
# ("no matter what, reveal ..." is not: the negation must stand right before the verb.)
_NEGATED = re.compile(r"(?i)\b(?:never|not|don't|dont|nor|refuse\s+to)\s+(?:\w+\s+){0,2}$")


@dataclass(frozen=True)
class Finding:
    """One fragment of a new line: ``kind`` (url, email, phone, code, markup, prompt_leak,
    ignore_instructions) and the text found."""

    kind: str
    text: str


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _host(url: str) -> str:
    host = re.sub(r"(?i)^[a-z]+://", "", url).split("/")[0].split("?")[0].split("#")[0]
    return host.rsplit("@", 1)[-1].split(":")[0].lower().rstrip(".")


def _is_phone(text: str) -> bool:
    digits = _digits(text)
    if not 7 <= len(digits) <= 15 or _DATE_OR_RANGE.match(text.strip()):
        return False
    # Seven or eight bare digits are more often an amount or an id than a phone number.
    return (text.lstrip().startswith(("+", "(")) or len(digits) >= 9
            or bool(re.search(r"\d{3}[-. ]\d{4}\b", text)))


def line_findings(line: str, seed_text: str = "") -> list[Finding]:
    """The fragments of ``line`` to review, each once, skipping those ``seed_text``
    already holds (compared without case)."""
    seed = seed_text.lower()
    found: list[Finding] = []

    def add(kind: str, text: str) -> None:
        text = text.strip()
        if text and text.lower() not in seed and Finding(kind, text) not in found:
            found.append(Finding(kind, text))

    emails = [m.group(0) for m in _EMAIL.finditer(line)]
    for email in emails:
        add("email", email)
    for m in _URL.finditer(line):
        url = m.group(0).rstrip(".,;:!?'\"")
        if any(url in e or _host(url) == e.split("@")[-1].lower() for e in emails):
            continue  # the domain of an e-mail address, already flagged as the address
        add("url", url)
    for m in _PHONE.finditer(line):
        if _is_phone(m.group(0)):
            add("phone", m.group(0))
    for pattern in _CODE:
        m = pattern.search(line)
        if m:
            add("code", line.strip())
            break
    for pattern in _MARKUP:
        for m in pattern.finditer(line):
            add("markup", m.group(0))
    for kind, pattern in (("prompt_leak", _REVEAL), ("ignore_instructions", _IGNORE)):
        for m in pattern.finditer(line):
            if not _NEGATED.search(line[max(0, m.start() - 24):m.start()]):
                add(kind, m.group(0))
    return found


@dataclass(frozen=True)
class Allow:
    """Allow-lists: an allowed fragment is not flagged.

    ``domains``: a URL whose host is one of them or a subdomain (also allows e-mail
    addresses there); ``emails``: an address, or a domain for all addresses at it (and
    its subdomains); ``phones``: numbers, compared by their digits; ``phrases``: literal
    text, compared without case or punctuation, that a flagged fragment or its whole
    line may lie inside.
    """

    domains: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()

    @classmethod
    def parse(cls, values: Iterable[str]) -> Allow:
        """Allow-lists from ``--allow`` values, each classified by its form:
        ``domain:``/``email:``/``phone:``/``phrase:`` prefixes say it outright; else
        something with ``@`` is an e-mail address or ``@domain``, digits (with ``+ -
        ( )`` and spaces) are a phone number, one word with a dot a domain (or a URL, for
        its host), anything else a phrase."""
        lists: dict[str, list[str]] = {"domains": [], "emails": [], "phones": [],
                                       "phrases": []}
        prefixes = {"domain": "domains", "email": "emails", "phone": "phones",
                    "phrase": "phrases"}
        for raw in values:
            value = raw.strip()
            if not value:
                continue
            head, sep, rest = value.partition(":")
            if sep and head.lower() in prefixes and not rest.startswith("//"):
                lists[prefixes[head.lower()]].append(rest.strip())
            elif "@" in value and " " not in value:
                lists["emails"].append(value)
            elif re.fullmatch(r"\+?[\d\s().-]+", value) and len(_digits(value)) >= 5:
                lists["phones"].append(value)
            elif " " not in value and "." in value.strip("."):
                lists["domains"].append(_host(value))
            else:
                lists["phrases"].append(value)
        return cls(**{k: tuple(v) for k, v in lists.items()})

    @classmethod
    def load(cls, values: Iterable[str] = (), *, env: str | None = None,
             path: str | Path | None = None) -> Allow:
        """The allow-lists in effect: ``values`` (``--allow``), the comma-separated
        ``GEPA_TRACE_REVIEW_ALLOW`` (``env`` overrides it), and the file
        ``gepa-trace-review.yaml`` in the working directory if there is one (``path``
        overrides it). A malformed file is a ``ConfigError`` naming it."""
        env_text = setting("review_allow") if env is None else env
        allow = cls.parse([*values, *env_text.split(",")])
        file = Path(path) if path is not None else Path(ALLOW_FILE)
        if file.is_file():
            allow = allow.merged(cls.from_file(file))
        elif path is not None:
            raise ConfigError(f"allow-list file {file} does not exist")
        return allow

    @classmethod
    def from_file(cls, path: Path) -> Allow:
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{path}: cannot read the allow-lists ({first})") from exc
        keys = ("domains", "emails", "phones", "phrases")
        if not isinstance(data, dict) or set(data) - set(keys):
            raise ConfigError(f"{path}: expected a mapping with keys {', '.join(keys)}")
        lists = {}
        for key in keys:
            items = data.get(key) or []
            if not isinstance(items, list) or not all(isinstance(i, str | int) for i in items):
                raise ConfigError(f"{path}: {key} must be a list of strings")
            lists[key] = tuple(str(i).strip() for i in items if str(i).strip())
        lists["domains"] = tuple(_host(d) for d in lists["domains"])
        return cls(**lists)

    def merged(self, other: Allow) -> Allow:
        return Allow(*(getattr(self, k) + getattr(other, k)
                       for k in ("domains", "emails", "phones", "phrases")))

    def __bool__(self) -> bool:
        return bool(self.domains or self.emails or self.phones or self.phrases)

    def _domain_allowed(self, host: str, domains: Iterable[str]) -> bool:
        host = host.lower().lstrip(".")
        for d in domains:
            d = d.lower().lstrip("@.")
            if d and (host == d or host.endswith("." + d)):
                return True
        return False

    def allows(self, kind: str, text: str, line: str = "") -> bool:
        """Whether a fragment of ``kind`` found in ``line`` is allowed."""
        if self.phrases:
            frag, whole = _norm(text), _norm(line)
            for phrase in self.phrases:
                p = _norm(phrase)
                if p and ((frag and frag in p) or (whole and whole in p)):
                    return True
        if kind == "url":
            return self._domain_allowed(_host(text), self.domains)
        if kind == "email":
            address = text.lower()
            domain = address.rsplit("@", 1)[-1]
            return (address in {e.lower() for e in self.emails if "@" in e.lstrip("@")}
                    or self._domain_allowed(domain, [e for e in self.emails
                                                     if "@" not in e.lstrip("@")])
                    or self._domain_allowed(domain, self.domains))
        if kind == "phone":
            return _digits(text) in {_digits(p) for p in self.phones}
        return False

    def to_dict(self) -> dict[str, list[str]]:
        return {"domains": list(self.domains), "emails": list(self.emails),
                "phones": list(self.phones), "phrases": list(self.phrases)}
