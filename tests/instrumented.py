"""The demo, ``run_traffic`` and recorded apps instrument the whole test process
(``gt.instrument()``); the next test must start without that instrumentation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from gepa_trace.collectors.instrument import active_instrumentation


@contextlib.contextmanager
def instrumentation_shut_down() -> Iterator[None]:
    """Run the block, then shut down whatever instrumentation it left active."""
    try:
        yield
    finally:
        inst = active_instrumentation()
        if inst is not None:
            inst.shutdown()


def recorded_demo(directory: Path, runs: int, seed: int, feedback_rate: float) -> str:
    """A SQLite store in ``directory`` holding ``runs`` traced demo production runs with
    their users' feedback (``demo.traffic.run_traffic``); its URL."""
    from gepa_trace.demo.traffic import run_traffic

    url = f"sqlite:///{directory / 'store.db'}"
    with instrumentation_shut_down():
        run_traffic(runs, store=url, seed=seed, feedback_rate=feedback_rate)
    return url
