"""Stopping at a safe point: signals, the stop file, and the reasons a run ends.

``SignalWatch`` turns SIGINT/SIGTERM into a flag the loop reads between steps (a second
Ctrl-C interrupts at once). Handlers are installed only on the main thread, and the
previous ones are restored when the watch closes.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class StopRun(Exception):
    """Raised at a safe point to end the run with ``reason``; ``requested``: by the user
    (a signal, the stop file) rather than by a limit."""

    def __init__(self, reason: str, requested: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.requested = requested


class SignalWatch:
    def __init__(self) -> None:
        self.received: str | None = None

    def install(self, stack: contextlib.ExitStack) -> None:
        """Watch SIGINT and SIGTERM until ``stack`` closes (no-op off the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, _frame):
            if self.received is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self.received = f"received {signal.Signals(signum).name}"

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            signal.signal(sig, handler)
            stack.callback(signal.signal, sig, previous)
