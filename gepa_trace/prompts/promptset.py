"""PromptSet: the prompts of one agent, one template per component, loadable and savable.

The optimizer produces PromptSets, ``gepa-trace export`` writes them, and the deployed
agent loads them (``PromptSet.load("prompts.json")["planner"]``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gepa_trace.errors import ConfigError
from gepa_trace.prompts.templates import (
    Messages,
    escape_braces,
    normalize_messages,
    template_variables,
    template_version,
    to_chat_prompt,
)

FILE_FORMAT = "gepa-trace/prompts@1"


@dataclass(frozen=True)
class PromptVersion:
    """One version of one component's template, with where it came from."""

    component: str
    messages: Messages
    parent_version: str | None = None
    run_id: str | None = None
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return template_version(self.messages)

    @property
    def instruction_index(self) -> int:
        """The message the optimizer rewrites: the first system message, else the first."""
        for i, msg in enumerate(self.messages):
            if msg["role"] == "system":
                return i
        for i, msg in enumerate(self.messages):
            if msg["role"] != "placeholder":
                return i
        raise ConfigError(f"component {self.component!r} has no text message to rewrite")

    @property
    def instruction(self) -> str:
        return self.messages[self.instruction_index]["content"]

    def with_instruction(self, text: str, **provenance: Any) -> PromptVersion:
        """This template with its instruction replaced by ``text``.

        Variables the old instruction used must survive (else ``ConfigError``); stray
        braces in ``text`` are escaped so the template still formats.
        """
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"new instruction for {self.component!r} is empty")
        index = self.instruction_index
        needed = template_variables(self.messages[index]["content"])
        kept = escape_braces(text.strip(), keep=needed)
        missing = needed - template_variables(kept)
        if missing:
            raise ConfigError(f"new instruction for {self.component!r} drops the template "
                              f"variables {sorted(missing)}")
        messages = [dict(m) for m in self.messages]
        messages[index]["content"] = kept
        return PromptVersion(self.component, messages,
                             parent_version=provenance.get("parent_version", self.version),
                             run_id=provenance.get("run_id", self.run_id),
                             scores=provenance.get("scores", {}))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "messages": self.messages}
        if self.parent_version:
            out["parent_version"] = self.parent_version
        if self.run_id:
            out["run_id"] = self.run_id
        if self.scores:
            out["scores"] = dict(self.scores)
        return out


class PromptSet(Mapping[str, Any]):
    """Templates by component name. ``prompts["planner"]`` is a ChatPromptTemplate bound
    to the component ``planner``; ``prompts.version_of("planner")`` its PromptVersion.

    Immutable: ``with_version`` and ``with_instruction`` return new sets.
    """

    def __init__(self, templates: Mapping[str, Any] | None = None, *, agent: str | None = None):
        self.agent = agent
        self._versions: dict[str, PromptVersion] = {}
        for name, value in (templates or {}).items():
            if isinstance(value, PromptVersion):
                self._versions[name] = value
            else:
                self._versions[name] = PromptVersion(name, normalize_messages(value))

    # Mapping: name -> ChatPromptTemplate
    def __getitem__(self, name: str):
        if name not in self._versions:
            raise KeyError(f"no component {name!r} in this prompt set "
                           f"(components: {', '.join(sorted(self._versions)) or 'none'})")
        pv = self._versions[name]
        return to_chat_prompt(pv.messages, component=name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._versions)

    def __len__(self) -> int:
        return len(self._versions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PromptSet) and self.versions() == other.versions()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.versions().items())))

    def __repr__(self) -> str:
        inside = ", ".join(f"{k}@{v}" for k, v in self.versions().items())
        return f"PromptSet({inside})"

    def version_of(self, name: str) -> PromptVersion:
        return self._versions[name]

    def versions(self) -> dict[str, str]:
        """component -> version hash."""
        return {name: pv.version for name, pv in self._versions.items()}

    def messages(self, name: str) -> Messages:
        return [dict(m) for m in self._versions[name].messages]

    def instruction(self, name: str) -> str:
        return self._versions[name].instruction

    def with_version(self, pv: PromptVersion) -> PromptSet:
        versions = dict(self._versions)
        versions[pv.component] = pv
        return PromptSet(versions, agent=self.agent)

    def with_instruction(self, name: str, text: str, **provenance: Any) -> PromptSet:
        return self.with_version(self._versions[name].with_instruction(text, **provenance))

    # files
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FILE_FORMAT}
        if self.agent:
            out["agent"] = self.agent
        out["components"] = {name: pv.to_dict() for name, pv in self._versions.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "prompt set") -> PromptSet:
        if not isinstance(data, Mapping) or not isinstance(data.get("components"), Mapping):
            raise ConfigError(f"{source}: expected an object with a 'components' mapping")
        fmt = data.get("format", FILE_FORMAT)
        if fmt != FILE_FORMAT:
            raise ConfigError(f"{source}: unknown format {fmt!r} (expected {FILE_FORMAT!r})")
        versions = {}
        for name, entry in data["components"].items():
            if isinstance(entry, (str, list)):
                entry = {"messages": entry}
            try:
                messages = normalize_messages(entry.get("messages"))
            except ConfigError as exc:
                raise ConfigError(f"{source}: component {name!r}: {exc}") from exc
            pv = PromptVersion(name, messages, parent_version=entry.get("parent_version"),
                               run_id=entry.get("run_id"), scores=entry.get("scores") or {})
            stated = entry.get("version")
            if stated and stated != pv.version:
                raise ConfigError(f"{source}: component {name!r} says version {stated} but "
                                  f"its messages hash to {pv.version} (edited by hand?)")
            versions[name] = pv
        return cls(versions, agent=data.get("agent"))

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON or YAML (by extension) atomically; returns the path."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
        else:
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PromptSet:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read prompt file {path}: {exc.strerror or exc}") from exc
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # yaml and json raise different types
            raise ConfigError(f"prompt file {path} is not valid "
                              f"{'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                              f"{str(exc).splitlines()[0]}") from exc
        return cls.from_dict(data, source=str(path))
