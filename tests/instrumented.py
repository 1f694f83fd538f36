"""The demo, ``run_traffic`` and recorded apps instrument the whole test process
(``gt.instrument()``); the next test must start without that instrumentation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
