"""One table of settings: each has an environment variable, a default and a type.

Read a setting with ``setting("name")``; explicit arguments always win over the
environment, which wins over the default. The store has one more step (the store given
to ``gt.instrument()`` in this process, between the argument and the environment): use
``gepa_trace.store.resolve_url``, whose module docstring is where that order is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    default: Any
    type: Callable[[str], Any]
    help: str


def _bool(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "on"}


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("store", "GEPA_TRACE_STORE", "sqlite:///gepa_trace.db", str,
                "SQLAlchemy URL of the store (sqlite:///path or postgresql+psycopg://...)"),
        Setting("sqlite_busy_timeout_ms", "GEPA_TRACE_SQLITE_BUSY_MS", 5000, int,
                "How long a SQLite writer waits for a lock before giving up"),
        Setting("service_name", "OTEL_SERVICE_NAME", "langchain-agent", str,
                "Service name of instrumented apps; also the agent name of root runs"),
        Setting("capture_content", "GEPA_TRACE_CAPTURE_CONTENT", True, _bool,
                "Record message text and values (false: structure only)"),
        Setting("export_batch_size", "GEPA_TRACE_EXPORT_BATCH", 512, int,
                "Spans per exporter batch (BatchSpanProcessor max_export_batch_size)"),
        Setting("export_delay_ms", "GEPA_TRACE_EXPORT_DELAY_MS", 1000, int,
                "Longest time a finished span waits before it is written"),
        Setting("sim_seed", "GEPA_SIM_SEED", 0, int, "Seed of the simulated models"),
        Setting("sim_latency_ms", "GEPA_SIM_LATENCY_MS", 0.0, float,
                "Latency injected into every simulated model call"),
        Setting("sim_faults", "GEPA_SIM_FAULTS", "", str,
                "Faults injected into simulated calls, e.g. rate_limit=0.1,timeout=0.05,malformed=0.1"),
        Setting("review_allow", "GEPA_TRACE_REVIEW_ALLOW", "", str,
                "Allow-list values of the prompt review, comma-separated (as --allow)"),
        Setting("debug", "GEPA_TRACE_DEBUG", False, _bool,
                "Show tracebacks in the CLI and re-raise internal errors"),
    ]
}


def setting(name: str, explicit: Any = None) -> Any:
    """The value of a setting: ``explicit`` if given, else its env var, else its default."""
    if explicit is not None:
        return explicit
    spec = SETTINGS[name]
    raw = os.environ.get(spec.env)
    if raw is None or raw == "":
        return spec.default
    try:
        return spec.type(raw)
    except ValueError as exc:
        from gepa_trace.errors import ConfigError

        raise ConfigError(f"{spec.env}={raw!r} is not a valid {spec.type.__name__}") from exc


def under_pytest() -> bool:
    """Internal errors are swallowed for users but re-raised under pytest (as logfire does)."""
    return "PYTEST_CURRENT_TEST" in os.environ
