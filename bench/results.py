"""bench/RESULTS.md: each benchmark owns one section, replaced on every run."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(heading: str, section: str) -> None:
    """Replace the section that starts with ``## {heading}`` (or append it)."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    body = section.strip("\n") + "\n"
    if not body.startswith("## "):
        body = f"## {heading}\n\n{body}"
    pattern = re.compile(rf"## {re.escape(heading)}\n.*?(?=\n## |\Z)", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: body, text)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    RESULTS.write_text(text)


def measured_with(script: str, argv: list[str] | None) -> str:
    """How and where a gepa comparison was measured, for a section's first line:
    "`.venv/bin/python bench/SCRIPT ARGS` on WHEN UTC, N CPUs, Python V, gepa V"."""
    import datetime as dt
    import os
    import platform
    import sys
    from importlib.metadata import version

    command = f"bench/{script} " + " ".join(argv or sys.argv[1:])
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"`.venv/bin/python {command.strip()}` on {when}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, gepa {version('gepa')}")
