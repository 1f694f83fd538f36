"""The HTML report of an optimization run: one self-contained file, charts inline.

    from gepa_trace.report import write_report
    write_report(store, "run-20261125-211856-2d8923", "report.html")

The page has no external URL (no CDN, no font, no image link) and no script; every
string from the store is escaped. Sections: summary, score versus rollouts, each
component's Pareto front, the lineage of accepted candidates, seed-to-best prompt diffs,
the reflection's diagnoses, budget spent, and the held-out significance test.
"""

from __future__ import annotations

import os
from pathlib import Path

from gepa_trace.report.data import ReportData, load_report_data
from gepa_trace.report.html import SECTIONS, render_page
from gepa_trace.store.engine import Store, open_store


def render_report(store: Store | str | None, run_id: str, *, confidence: float = 0.95) -> str:
    """The report of run ``run_id`` as an HTML string.

    ``store`` is a Store or a store URL. Raises ``NotFoundError`` for an unknown run.
    ``confidence`` is the level of the held-out interval.
    """
    return render_page(load_report_data(open_store(store), run_id, confidence=confidence))


def write_report(store: Store | str | None, run_id: str, path: str | os.PathLike,
                 *, confidence: float = 0.95) -> Path:
    """Write the report of run ``run_id`` to ``path`` (atomically: a reader never sees a
    half-written file) and return the path. Parent directories are created."""
    page = render_report(store, run_id, confidence=confidence)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


__all__ = ["SECTIONS", "ReportData", "load_report_data", "render_report", "write_report"]
